"""Named reconstruction recipes composed from imaging/, inference/, io/ and metrics/ parts, each
registered by name in :mod:`~cryolens.methods.registry` (the CLI and the benchmark read it).

- ``backprojection`` (:mod:`~cryolens.methods.backprojection`): homogeneous map from known poses and CTFs.
"""

from . import backprojection
from .registry import Known, MethodOutputs, Recipe, get, recipes, register, unregister

register(Recipe(
    name="backprojection", fit=backprojection.fit,
    summary="CTF-weighted Fourier insertion with a per-shell Wiener/MAP filter, gold-standard half-maps",
    defaults={"pad": 2, "batch_size": 256, "seed": 0}, needs=frozenset({"poses", "ctf"}),
    heterogeneity="homogeneous", learned=False, reference="RELION relion_reconstruct (Scheres 2012)"), replace=True)

# --- cryoDRGN family (methods/cryodrgn.py, methods/cryodrgn2.py) ---
from . import cryodrgn  # noqa: E402

_DRGN_REF = "Zhong et al. 2021, Nat. Methods (cryoDRGN 4.3 train_vae / train_nn / train_dec)"
register(Recipe(
    name="cryodrgn", fit=cryodrgn.fit,
    summary="neural volume V(k, z) + amortized MLP encoder q(z|image), β-VAE in Hartley space; poses, CTF known",
    defaults=dict(cryodrgn.DEFAULTS), needs=frozenset({"poses", "ctf"}), heterogeneity="continuous",
    learned=True, reference=_DRGN_REF), replace=True)
register(Recipe(
    name="cryodrgn-homo", fit=cryodrgn.fit_homo,
    summary="neural volume without z (cryoDRGN train_nn); poses, CTF known",
    defaults={k: v for k, v in cryodrgn.DEFAULTS.items() if k not in ("zdim", "enc_layers", "enc_dim", "encoder",
                                                                          "beta", "z_lr")},
    needs=frozenset({"poses", "ctf"}), heterogeneity="homogeneous", learned=True, reference=_DRGN_REF),
    replace=True)
register(Recipe(
    name="cryodrgn-autodecoder", fit=cryodrgn.fit_autodecoder,
    summary="neural volume + one free z per image (train_dec); variational=true: mean + variance per image",
    defaults={**{k: v for k, v in cryodrgn.DEFAULTS.items() if k not in ("enc_layers", "enc_dim", "encoder")},
              "variational": False},
    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True, reference=_DRGN_REF),
    replace=True)
from . import cryodrgn2  # noqa: E402

register(Recipe(
    name="cryodrgn2", fit=cryodrgn2.fit,
    summary="ab initio: neural volume + frequency-marching hierarchical pose search (heterogeneous=true adds z)",
    defaults=dict(cryodrgn2.DEFAULTS), needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=True,
    reference="Zhong et al. 2021, ICCV (cryoDRGN2; cryoDRGN abinit_homo_old / abinit_het_old)"), replace=True)

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

from . import refine3d  # noqa: E402

register(Recipe(
    name="relion-refine3d", fit=refine3d.fit,
    summary="gold-standard auto-refinement, full pose posterior (adaptive oversampling), MAP with tau2 from the FSC",
    defaults=dict(refine3d.RELION_DEFAULTS), needs=frozenset({"ctf"}), heterogeneity="homogeneous", learned=False,
    reference="RELION 3.1 relion_refine --auto_refine (Scheres 2012)"), replace=True)
register(Recipe(
    name="cryosparc-refine", fit=refine3d.fit,
    summary="gold-standard homogeneous refinement, modal poses by hierarchical search with frequency marching",
    defaults=dict(refine3d.CRYOSPARC_DEFAULTS), needs=frozenset({"ctf"}), heterogeneity="homogeneous",
    learned=False, reference="cryoSPARC homogeneous refinement (Punjani 2017); cryoDRGN2 pose search (Zhong 2021)"),
    replace=True)

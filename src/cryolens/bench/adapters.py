"""Outside programs as benchmark methods: each adapter is a :class:`~cryolens.methods.registry.Recipe`
(same ``fit`` signature, same ``needs``/``heterogeneity``) kept *outside* the method registry — they
are not cryolens methods, but the runner treats them exactly like one, so they sit in the same table.

- ``relion-reconstruct``: RELION 3.1 ``relion_reconstruct`` from known poses and CTFs.
- ``relion-autorefine``: RELION 3.1 3D auto-refine (``relion_refine_mpi``) for unknown poses,
  starting from the task's initial model (the ground truth low-pass filtered, see the runner).
- ``cryodrgn-4.3`` / ``cryodrgn-4.3-homo`` (optional): cryoDRGN 4.3 itself (``train_vae`` /
  ``train_nn``, poses and CTF known) through the peer adapter :mod:`cryolens.bench.cryodrgn` (runs
  cryoDRGN from its own virtual environment) — present when that module exists and finds the
  ``cryodrgn`` program. A module may also expose ``ADAPTERS`` (``{name: Recipe}``), added as they are.
"""

from __future__ import annotations

import importlib
import logging

from ..methods.registry import Recipe
from . import relion

log = logging.getLogger(__name__)

RELION_ADAPTERS = {
    "relion-reconstruct": Recipe(
        name="relion-reconstruct", fit=relion.fit_relion_reconstruct,
        summary="RELION 3.1 relion_reconstruct --ctf (known poses), half maps by --subset",
        defaults={"pad": 2, "seed": 0, "timeout_s": 3600}, needs=frozenset({"poses", "ctf"}),
        heterogeneity="homogeneous", reference="Scheres 2012 (RELION 3.1)"),
    "relion-autorefine": Recipe(
        name="relion-autorefine", fit=relion.fit_relion_refine,
        summary="RELION 3.1 3D auto-refine (relion_refine_mpi, gold-standard halves) from a low-passed initial model",
        defaults={"initial_model": "", "ini_high_A": 30.0, "healpix_order": 1, "local_healpix_order": 3,
                  "offset_range_px": 2, "offset_step_px": 1, "particle_diameter_A": 0.0, "seed": 0,
                  "timeout_s": 3600},
        needs=frozenset({"ctf"}), heterogeneity="homogeneous", reference="Scheres 2012 (RELION 3.1 auto-refine)"),
}

RELION_PROGRAMS = {"relion-reconstruct": ("relion_reconstruct",), "relion-autorefine": ("relion_refine_mpi", "mpirun")}


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name != module:
            log.warning("%s could not be imported: %s", module, e)
        return None


_PEER_FUNCTIONS = ("cryodrgn_program", "prepare_inputs", "train_vae", "train_nn", "read_latents", "eval_vol",
                   "read_maps")


def _peer_fit(mod, heterogeneous: bool):
    """The ``fit`` of the cryoDRGN peer adapter (``mod`` = :mod:`cryolens.bench.cryodrgn`)."""

    def fit(particles, known, run, config, device=None, progress=True):
        import numpy as np
        import torch

        from ..methods.registry import MethodOutputs

        work = run.path("cryodrgn")
        inputs = mod.prepare_inputs(particles, work / "inputs")
        common = dict(epochs=int(config["epochs"]), batch_size=int(config["batch_size"]), seed=int(config["seed"]),
                      threads=int(config["threads"]), timeout=float(config["timeout_s"]))
        px = particles.pixel_size
        if not heterogeneous:
            res = mod.train_nn(inputs, work / "train", layers=int(config["dec_layers"]), dim=int(config["dec_dim"]),
                               **common)
            vol = mod.read_maps(work / "train" / "reconstruct.mrc")[0]
            return MethodOutputs(pixel_size=px, volume=torch.from_numpy(vol),
                                 metrics={"cryodrgn_wall_s": res.wall_s, "cryodrgn_peak_rss_mib": res.peak_rss_mib})
        res = mod.train_vae(inputs, work / "train", zdim=int(config["zdim"]), enc_layers=int(config["enc_layers"]),
                            enc_dim=int(config["enc_dim"]), dec_layers=int(config["dec_layers"]),
                            dec_dim=int(config["dec_dim"]), **common)
        z = mod.read_latents(work / "train")
        calls = [0]

        def decode(zz: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            paths = mod.eval_vol(work / "train", zz.detach().cpu().numpy(), work / f"eval_{calls[0]:03d}", px,
                                 threads=int(config["threads"]))
            return torch.from_numpy(mod.read_maps(paths)).to(zz.device)

        mean = decode(torch.as_tensor(np.asarray(z).mean(0, keepdims=True)))[0]
        return MethodOutputs(pixel_size=px, volume=mean, latents=z, decode=decode,
                             metrics={"cryodrgn_wall_s": res.wall_s, "cryodrgn_peak_rss_mib": res.peak_rss_mib})

    return fit


def peer_adapters(mod) -> dict[str, Recipe]:
    """cryoDRGN 4.3 run through the peer module ``mod`` (its functions :data:`_PEER_FUNCTIONS`),
    as two adapters; ``{}`` when the module lacks them."""
    if mod is None or not all(hasattr(mod, f) for f in _PEER_FUNCTIONS):
        return {}
    base = {"epochs": 8, "batch_size": 8, "seed": 0, "dec_layers": 3, "dec_dim": 256, "threads": 1,
            "timeout_s": 3600}
    ref = "Zhong et al. 2021 (cryoDRGN 4.3, run in its own environment)"
    return {
        "cryodrgn-4.3": Recipe(name="cryodrgn-4.3", fit=_peer_fit(mod, True),
                               summary="cryoDRGN 4.3 train_vae (the original program), poses and CTF known",
                               defaults={**base, "zdim": 8, "enc_layers": 3, "enc_dim": 256},
                               needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True,
                               reference=ref),
        "cryodrgn-4.3-homo": Recipe(name="cryodrgn-4.3-homo", fit=_peer_fit(mod, False),
                                    summary="cryoDRGN 4.3 train_nn (the original program), poses and CTF known",
                                    defaults=base, needs=frozenset({"poses", "ctf"}), heterogeneity="homogeneous",
                                    learned=True, reference=ref),
    }


def _peer_available(mod) -> bool:
    try:
        mod.cryodrgn_program()
        return True
    except Exception:  # not installed: the adapter is simply absent
        return False


def adapters(available_only: bool = True) -> dict[str, Recipe]:
    """All benchmark adapters by name; with ``available_only`` those whose programs are installed."""
    import shutil

    out: dict[str, Recipe] = {}
    for name, rec in RELION_ADAPTERS.items():
        if not available_only or all(shutil.which(p) for p in RELION_PROGRAMS[name]):
            out[name] = rec
    mod = _optional("cryolens.bench.cryodrgn")
    if mod is not None and (not available_only or _peer_available(mod)):
        out.update(peer_adapters(mod))
    if mod is not None:
        out.update(dict(getattr(mod, "ADAPTERS", {})))
    return out

"""Outside programs as benchmark methods: each adapter is a :class:`~cryolens.methods.registry.Recipe`
(same ``fit`` signature, same ``needs``/``heterogeneity``) kept *outside* the method registry — they
are not cryolens methods, but the runner treats them exactly like one, so they sit in the same table.

- ``relion-reconstruct``: RELION 3.1 ``relion_reconstruct`` from known poses and CTFs.
- ``relion-autorefine``: RELION 3.1 3D auto-refine (``relion_refine_mpi``) for unknown poses,
  starting from the task's initial model (the ground truth low-pass filtered, see the runner).
- cryoDRGN (optional): when :mod:`cryolens.bench.cryodrgn` exists and exposes ``ADAPTERS``
  (``{name: Recipe}``) — the peer adapter that runs cryoDRGN from its own environment — its entries
  are added here. Nothing else needs to change for them to appear on the leaderboard.
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


def _optional(module: str) -> dict[str, Recipe]:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if e.name != module:
            log.warning("%s could not be imported: %s", module, e)
        return {}
    return dict(getattr(mod, "ADAPTERS", {}))


def adapters(available_only: bool = True) -> dict[str, Recipe]:
    """All benchmark adapters by name; with ``available_only`` those whose programs are installed."""
    import shutil

    out: dict[str, Recipe] = {}
    for name, rec in RELION_ADAPTERS.items():
        if not available_only or all(shutil.which(p) for p in RELION_PROGRAMS[name]):
            out[name] = rec
    extra = _optional("cryolens.bench.cryodrgn")
    for name, rec in extra.items():
        check = getattr(rec, "available", None)
        if not available_only or check is None or check():
            out[name] = rec
    return out

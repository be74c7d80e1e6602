"""Homogeneous 3D refinement recipes: ``relion-refine3d`` (full-posterior EM, RELION's auto-refine) and
``cryosparc-refine`` (modal EM, hierarchical pose search: cryoSPARC's homogeneous refinement / cryoDRGN2's).
Both compose :func:`~cryolens.inference.autorefine.auto_refine`; they need the CTF and an initial map.

**relion-refine3d** — RELION 3.1 GUI defaults (Refine3D tab), adapted to small boxes: 7.5° first (a 15° pass
oversampled), local searches from ``local_order = 4``, offsets ±5 px in steps of 1 px (``--offset_step 2``); the
start map as given, its own resolution (where its spectrum ends) setting the first E-step's shells (``lowpass``:
RELION's ``--ini_high``, GUI default 60 Å); ``T = 1``, ``--incr_size 10``, ``--adaptive_fraction 0.999``;
``max_order = 5`` (0.94°) where the measured pose accuracy asks for it; fold references and the solvent-corrected
FSC (docs/METHODS.md). **cryosparc-refine** — modal EM: per image the pose posterior's mode by
:func:`~cryolens.inference.pose_search.hierarchical_search` (15° base grid × ±5 px shifts, keep 8, split in SO(3)
and shift per level, frequency marching up to ``k_max``), weight 1, the same MAP back-projection; 30 Å low-pass.
**Pseudo-symmetry.** ``relax_symmetry = "Cn"`` (RELION 4's ``--relax_sym``): local searches also visit each pose's
mates under ``Cn`` (axis found on the initial map); the maps stay unsymmetrized. **Initial map.** ``init_map``; without
one ``cryosparc-abinit`` makes one when registered, else a soft sphere of a quarter of the box."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from ..imaging.grids import spherical_mask
from ..imaging.so3_grid import angular_step
from ..inference.autorefine import RefineConfig, RefineState, auto_refine, poses_to_particles
from ..inference.rank_timing import totals
from ..io.particles import Particles
from .config import RecipeConfig, as_dict, option

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refine3DConfig(RecipeConfig):
    """Options of relion-refine3d and cryosparc-refine (RELION 3.1 auto-refine defaults, module docstring)."""

    init_map: str | None = option(None, "start map (.mrc); none: run cryosparc-abinit for one")
    lowpass: float | None = option(None, "initial low-pass of the start map, Å (--ini_high); none: the map's "
                                         "own resolution (where its power spectrum ends)")
    pose_inference: Literal["posterior", "modal"] = option("posterior", "full pose posterior or the mode only")
    healpix_order: int = option(2, "initial HEALPix order (2 = 7.5° after oversampling)")
    local_order: int = option(4, "HEALPix order from which searches are local (--auto_local_healpix_order)")
    max_order: int = option(5, "finest HEALPix order (final step: its oversampled step)")
    local_range_deg: float | None = option(None, "local search radius at local_order, °, halving per order "
                                                 "(none: 2.5 steps)")
    offset_range: float = option(5.0, "offset search range, px (--offset_range)")
    offset_step: float = option(2.0, "offset search step, px (--offset_step; oversampled to half)")
    tau2_fudge: float = option(1.0, "regularisation T (--tau2_fudge)")
    incr_size: int = option(10, "shells above the current resolution used by the E-step (--incr_size)")
    mass: float = option(0.999, "posterior mass of the significant sets (--adaptive_fraction)")
    max_coarse: int = option(16, "at most this many significant poses per image in the coarse passes")
    max_significant: int = option(48, "at most this many significant poses per image in a global search's last pass")
    max_iterations: int = option(30, "iteration cap")
    min_gain_shells: float = option(0.5, "resolution gain per iteration below which the search stalls, shells")
    pad: int = option(2, "oversampling of the projector and the accumulator")
    batch_size: int | None = option(None, "images per E-step batch; none: from the free memory (≤ 64 on a CPU)")
    keep: int = option(8, "modal search: candidates kept per level")
    particle_diameter: float | None = option(None, "particle diameter, Å (--particle_diameter); none: 0.8 × box")
    coarse_size: bool = option(True, "coarse passes use shells up to RELION's coarse_size only")
    pose_estimate: Literal["map", "mean"] = option("map", "pose: grid point of largest weight, or posterior mean")
    flatten_solvent: bool = option(True, "flatten the solvent of the E-step references (--flatten_solvent)")
    mask_edge: float = option(5.0, "soft edge of the solvent mask, px (--width_mask_edge)")
    relax_symmetry: str = option("C1", "C1, or Cn whose mates the local searches also visit (--relax_sym)")
    follow_accuracy: bool = option(True, "local prior σ and sampling refinement follow the measured pose accuracy")
    accuracy_images: int = option(50, "images per half on which the pose accuracy is measured (0: not followed)")
    posterior_sigma2: bool = option(False, "σ² from the posterior-weighted residual (RELION's), not the MAP pose's")
    adaptive_caps: bool = option(False, "significant-set caps follow the measured pose accuracy (≤ 8× the caps)")
    start_from_poses: bool = option(False, "start from the input's poses (rlnAngle*, rlnOrigin*)")
    reference_folds: int = option(8, "K ≥ 2: K folds per half, each aligned to its half's map without it; 0: none")
    flat_local_prior: bool = option(False, "local searches without a prior on the angle to the last pose")
    solvent_fsc: bool = option(True, "FSC in an automatic mask, phase-randomisation corrected (--solvent_correct_fsc)")
    resume: bool = option(False, "continue from the run folder's checkpoint.pt")


RELION_DEFAULTS = as_dict(Refine3DConfig())


def refine_config(config: Refine3DConfig | dict) -> RefineConfig:
    """The :class:`RefineConfig` of a recipe config (``lowpass``, ``local_range_deg`` converted)."""
    d = dict(as_dict(config) if isinstance(config, Refine3DConfig) else config)
    d["initial_lowpass"] = d.pop("lowpass", None)
    deg = d.pop("local_range_deg", None)
    if deg is not None:
        d["local_range_steps"] = float(deg) / angular_step(int(d.get("local_order", 4)))
    return RefineConfig.from_dict(d)


def initial_map(particles: Particles, config: Refine3DConfig, run=None, device=None, progress: bool = True,
                given: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """The start map ``(D, D, D)`` (``given``, a tensor, first) and where it came from (module docstring)."""
    d = particles.box_size
    if given is not None:
        return given.float(), "given volume"
    if config.init_map:
        from .class3d import read_start_map
        return read_start_map(config.init_map, d).reshape(d, d, d), f"file {config.init_map}"
    from .registry import Known, recipes

    abinit = recipes().get("cryosparc-abinit")
    if abinit is not None:
        from ..io.runfolder import RunFolder
        sub = RunFolder(Path(run.root) / "abinit") if run is not None else None
        log.warning("no initial map given: running the cryosparc-abinit recipe for one")
        out = abinit.fit(particles, Known(poses=False, ctf=True), sub, abinit.config(), device, progress)
        return out.volume.float(), "cryosparc-abinit (no initial map given)"
    log.warning("no initial map given and no ab initio recipe registered: starting from a soft sphere")
    return spherical_mask(d, radius=d / 4, width=3.0).float(), "soft sphere (no initial map given)"


def iteration_writer(run, particles: Particles):
    """``on_iteration`` of :func:`auto_refine` writing RELION's per-iteration snapshots into ``run``:
    ``iterNNN_half{1,2}.mrc`` (unfiltered), ``iterNNN_fsc.json``, ``iterNNN_particles.star``."""
    from ..io.mrc import write_volume
    from ..io.star import write_star
    def write(state: RefineState) -> None:
        it, px = state.iteration, particles.pixel_size
        for h in (0, 1):
            write_volume(run.path(f"iter{it:03d}_half{h + 1}.mrc"), state.unfiltered[h].float().cpu().numpy(), px)
        run.write_json(f"iter{it:03d}_fsc.json", {"fsc": state.history[-1]["fsc"],
                                                   "resolution_A": state.history[-1]["resolution_A"]})
        write_star(run.path(f"iter{it:03d}_particles.star"), poses_to_particles(particles, state))
    return write


def fit(particles: Particles, known, run, config: Refine3DConfig, device=None, progress: bool = True,
        inputs: dict | None = None):
    """Registry entry point of both recipes: the initial map (module docstring; ``inputs={"init_map": tensor}``
    gives it as a tensor), then :func:`auto_refine`. A dict config is read over the defaults."""
    from .registry import MethodOutputs
    if isinstance(config, dict):
        config = replace(Refine3DConfig(), **config)
    if particles.ctf is None:
        raise InputError(f"{particles.name}: no CTF parameters; refinement needs the CTF (rlnDefocusU ...)")
    vol, note = initial_map(particles, config, run, device, progress, (inputs or {}).get("init_map"))
    result = auto_refine(particles, vol, config=refine_config(config), run=run, device=device, progress=progress,
                         resume=config.resume, on_iteration=None if run is None else iteration_writer(run, particles))
    metrics = {"resolution_halfmap_0143_A": result.resolution, "initial_map": note, "iterations": len(result.history),
               "converged": result.converged, "fsc_halfmaps": np.asarray(result.fsc).tolist(),
               "rank_seconds": totals(result.history)}  # per rank: E-step, M-step, writes, waits (rank_timing)
    if result.relax_axis is not None:  # relax_symmetry: the pseudo-symmetry axis found on the start map
        metrics["relax_symmetry_axis_xyz"] = [float(x) for x in result.relax_axis]
    return MethodOutputs(pixel_size=result.pixel_size, volume=result.volume, half_maps=result.half_maps,
                         rotations=result.rotations, shifts=result.shifts, half_labels=np.asarray(result.half),
                         history=list(result.history), metrics=metrics,  # an ab initio start map is kept
                         extra_volumes={"abinit/map": vol} if note.startswith("cryosparc-abinit") else {})

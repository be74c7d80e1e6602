"""Homogeneous 3D refinement recipes: ``relion-refine3d`` (full-posterior EM, RELION's auto-refine)
and ``cryosparc-refine`` (modal EM with hierarchical pose search, cryoSPARC's homogeneous
refinement / cryoDRGN2's search). Both compose :func:`~cryolens.inference.autorefine.auto_refine`;
they need the CTF, estimate poses, and start from an initial map.

**relion-refine3d** — RELION 3.1 GUI defaults (Refine3D tab), adapted to small boxes:

- initial angular sampling 7.5° (``healpix_order = 2``: a 15° pass oversampled to 7.5°), local
  searches from ``auto_local_healpix_order = 4`` (3.75° coarse, 1.875° oversampled), offset range
  ±5 px, step 1 px (command-line ``--offset_step 2``, oversampled to 1), initial low-pass 60 Å,
  ``T = 1`` (``--tau2_fudge``), ``--incr_size 10``, significant weights ``--adaptive_fraction 0.999``.
- At D = 64 and 1.5 Å/px (a 96 Å box) a 60 Å low-pass leaves only shells 0–1 of the start map,
  too few to orient 15° views reliably; the ``lowpass`` option (CLI ``--lowpass``) sets it, and
  20–30 Å suits such boxes (the benchmark uses 20 Å). ``max_order = 5`` lets the sampling reach
  0.94° where the resolution keeps improving (RELION continues until the angular accuracy is reached).

**cryosparc-refine** — modal EM: per image the mode of the pose posterior by
:func:`~cryolens.inference.pose_search.hierarchical_search` (base grid 15° = 4,608 rotations × a
±5 px shift grid of step 2 px, keep 8 candidates, split each into 8 SO(3) children and a finer shift
grid per level, frequency marching up to the current ``k_max``), weight 1, then the same gold-standard
MAP back-projection. cryoSPARC's default initial low-pass is 30 Å; its branch-and-bound uses bounds
on unexplored regions, here the keep-top-K heuristic of cryoDRGN2 (see ``pose_search`` for its
measured miss rate).

**Pseudo-symmetry.** ``relax_symmetry = "Cn"`` (CLI ``--relax-sym Cn``; RELION 4's ``--relax_sym``): the
local searches also visit each pose's mates under ``Cn`` about the axis found on the initial map, so
images can leave the wrong mate of a near-symmetric particle (a homodimer); the maps stay unsymmetrized.
The modal recipe searches globally at every iteration, which visits the mates anyway.

**Initial map.** ``config["init_map"]``: a path to an ``.mrc`` or a ``(D, D, D)`` tensor. Without one,
the recipe runs the ``cryosparc-abinit`` recipe when it is registered and uses its map; otherwise it
starts from a soft sphere of a quarter of the box (no orientation information: refinement from it
converges only for very favourable data) — and says which in its metrics (``initial_map``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..imaging.grids import spherical_mask
from ..inference.autorefine import RefineConfig, RefineResult, auto_refine, poses_to_particles
from ..io.particles import Particles

log = logging.getLogger(__name__)

RELION_DEFAULTS = {"init_map": None, "lowpass": 60.0, "pose_inference": "posterior", "healpix_order": 2,
                   "local_order": 4, "max_order": 5, "offset_range": 5.0, "offset_step": 2.0, "tau2_fudge": 1.0,
                   "incr_size": 10, "mass": 0.999, "max_coarse": 16, "max_significant": 48, "max_iterations": 30,
                   "pad": 2, "batch_size": 64, "seed": 0, "resume": False, "relax_symmetry": "C1"}
CRYOSPARC_DEFAULTS = {**RELION_DEFAULTS, "lowpass": 30.0, "pose_inference": "modal", "keep": 8}


def refine_config(config: dict) -> RefineConfig:
    """The :class:`RefineConfig` of a recipe config (``lowpass`` → ``initial_lowpass``)."""
    d = dict(config)
    d["initial_lowpass"] = d.pop("lowpass", None)
    return RefineConfig.from_dict(d)


def initial_map(particles: Particles, config: dict, run=None, device=None, progress: bool = True
                ) -> tuple[torch.Tensor, str]:
    """The start map ``(D, D, D)`` and a note of where it came from (module docstring)."""
    d = particles.box_size
    src = config.get("init_map")
    if isinstance(src, torch.Tensor):
        return src.float(), "given volume"
    if src:
        from ..io.mrc import read_volume

        vol, _ = read_volume(src)
        vol = torch.from_numpy(np.asarray(vol, dtype=np.float32))
        if tuple(vol.shape) != (d, d, d):
            raise InputError(f"{src}: initial map is {tuple(vol.shape)}, the particles need ({d}, {d}, {d})")
        return vol, f"file {src}"
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


def write_outputs(result: RefineResult, particles: Particles, run, reference: torch.Tensor | None = None,
                  extra_metrics: dict | None = None) -> dict:
    """Final map, half maps, STAR of the poses, plots, metrics and report of a refinement in ``run``;
    with a ground-truth ``reference``, also the FSC against it (0.5 resolution). Returns the metrics."""
    from ..analysis.em_plots import plot_angular_distribution, plot_fsc_iterations, plot_resolution_history
    from ..analysis.plots import plot_fsc, plot_sections
    from ..io.mrc import write_volume
    from ..io.star import write_star
    from ..metrics.fsc import fsc, resolution_at

    px, d = particles.pixel_size, particles.box_size
    write_volume(run.path("map.mrc"), result.volume.numpy(), px)
    write_volume(run.path("half1.mrc"), result.half_maps[0].numpy(), px)
    write_volume(run.path("half2.mrc"), result.half_maps[1].numpy(), px)
    state = {"rotations": result.rotations, "shifts": result.shifts, "half": torch.as_tensor(result.half)}
    write_star(run.path("particles.star"), poses_to_particles(particles, state))
    metrics = {"n_images": len(particles), "box_size": d, "pixel_size": px, "iterations": len(result.history),
               "converged": result.converged, "resolution_halfmap_0143_A": result.resolution,
               "fsc_halfmaps": np.asarray(result.fsc).tolist(),
               "final_angular_step_deg": result.history[-1]["angular_step_deg"] if result.history else None,
               "wall_time_s": result.history[-1].get("elapsed_s") if result.history else None,
               "history": [{k: v for k, v in h.items() if k != "fsc"} for h in result.history]}
    if result.relax_axis is not None:  # relax_symmetry: the pseudo-symmetry axis found on the start map
        metrics["relax_symmetry_axis_xyz"] = [float(x) for x in result.relax_axis]
    metrics.update(extra_metrics or {})
    curves = {"half maps": np.asarray(result.fsc)}
    sections = {"map": result.volume.numpy()}
    if reference is not None:
        ref = reference.float()
        gt = np.asarray(fsc(result.volume, ref))
        metrics["fsc_vs_ground_truth"] = gt.tolist()
        metrics["resolution_vs_ground_truth_05_A"] = float(resolution_at(gt, 0.5, px, d))
        curves["map vs ground truth"] = gt
        sections["ground truth"] = ref.numpy()
    plot_fsc(curves, px, d, run.path("fsc.png"))
    plot_sections(sections, run.path("sections.png"))
    if result.history:
        plot_fsc_iterations(result.history, px, d, run.path("fsc_iterations.png"))
        plot_resolution_history(result.history, run.path("resolution_history.png"), px)
    plot_angular_distribution(result.rotations.numpy(), run.path("angular_distribution.png"))
    run.write_metrics(metrics)
    return metrics


def refine(particles: Particles, config: dict, run=None, device=None,
           progress: bool = True) -> tuple[RefineResult, str]:
    """Run a refinement recipe's config on ``particles`` (CTF known): the initial map (module
    docstring), then :func:`auto_refine`. Returns the result and where the start map came from."""
    if particles.ctf is None:
        raise InputError(f"{particles.name}: no CTF parameters; refinement needs the CTF (rlnDefocusU ...)")
    vol, note = initial_map(particles, config, run, device, progress)
    result = auto_refine(particles, vol, config=refine_config(config), run=run, device=device, progress=progress,
                         resume=bool(config.get("resume", False)))
    return result, note


def fit(particles: Particles, known, run, config: dict, device=None, progress: bool = True):
    """Registry entry point (:mod:`cryolens.methods.registry`) of both recipes."""
    from .registry import MethodOutputs

    result, note = refine(particles, config, run, device, progress)
    return MethodOutputs(pixel_size=result.pixel_size, volume=result.volume, half_maps=result.half_maps,
                         rotations=result.rotations, shifts=result.shifts,
                         metrics={"resolution_halfmap_0143_A": result.resolution, "initial_map": note,
                                  "iterations": len(result.history), "converged": result.converged,
                                  "fsc_halfmaps": np.asarray(result.fsc).tolist()})

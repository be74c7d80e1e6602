"""``cryosparc-abinit`` and ``cryosparc-abinit-hetero``: ab initio from random starts, then refinement.

Composition (no physics here), after Punjani et al. 2017 (cryoSPARC; docs/METHODS.md): (1) ab initio
(:mod:`cryolens.inference.abinit`, which states the step-size, batch-size and resolution schedules) from
K seeded random starts or ``init_map``; (2) hand-over, each map first centred on its centre of mass (an
ab initio map's origin drifts by a few voxels, eating into the refinement's shift range; cryoSPARC
centres too): K = 1 → gold-standard auto-refinement (:func:`~cryolens.inference.autorefine.auto_refine`)
from the map low-passed to ``handover_lowpass`` Å (30 Å, cryoSPARC's refinement default); K > 1
(``cryosparc-abinit-hetero``) → Class3D (:mod:`cryolens.methods.class3d`), ``class3d_iterations`` at 15°.
(A hand-over at 12 Å keeps 4E43's asymmetry: benchmarks/RESULTS.md.) ``refine = False``: (1) only.
Checkpoints: ``abinit_checkpoint.pt`` (every ``checkpoint_every`` iterations), ``refine/``, ``class3d/``;
``resume`` continues from the stage reached. ``fit`` returns the ab initio maps (``abinit_class_001`` …),
the refined or class maps, final poses (and classes) and each stage's ``history`` (with ``stage``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import InputError
from ..imaging.shift import center_volume, center_volumes
from ..inference import abinit as _abinit
from ..inference import autorefine
from ..io.particles import Particles
from ..io.runfolder import RunFolder
from .config import RecipeConfig, as_dict, build_config, option

CHECKPOINT = "abinit_checkpoint.pt"


@dataclasses.dataclass(frozen=True)
class AbinitRecipeConfig(RecipeConfig):
    """Options of cryosparc-abinit and cryosparc-abinit-hetero (cryoSPARC ab initio defaults)."""

    n_classes: int = option(1, "number of classes K (K > 1: hand over to Class3D)")
    n_iterations: int = option(300, "ab initio iterations (mini-batches)")
    batch_size: int = option(90, "images per mini-batch during the first half")
    final_batch_size: int = option(300, "images per mini-batch during the second half")
    initial_resolution: float = option(35.0, "resolution limit of the first iteration, Å")
    final_resolution: float = option(12.0, "resolution limit reached at 3/4 of the iterations, Å")
    grid_level: int = option(2, "SO(3) grid level of the pose marginalisation (2 = 15°)")
    max_shift: float = option(3.0, "offset range, px (also the refinement's)")
    shift_step: float = option(1.0, "offset step, px")
    eta_min: float = option(0.1, "smallest step size of the running averages")
    tau2_fudge: float = option(4.0, "regularisation T")
    init_map: str | None = option(None, "warm start (.mrc) instead of random starts")
    refine: bool = option(True, "hand over to refinement (K = 1) or Class3D (K > 1)")
    handover_lowpass: float = option(30.0, "low-pass of the handed-over maps, Å")
    refine_max_iterations: int = option(30, "refinement: iteration cap")
    refine_relax_symmetry: str = option("C1", "refinement: C1, or Cn whose mates local searches visit")
    refine_offset_step: float = option(2.0, "refinement: offset step, px (RELION's --offset_step)")
    class3d_iterations: int = option(10, "Class3D iterations after a multi-class ab initio")
    checkpoint_every: int = option(10, "ab initio iterations between checkpoints")
    resume: bool = option(False, "continue from the run folder's checkpoints")


DEFAULTS = as_dict(AbinitRecipeConfig())
_ABINIT_KEYS = [f.name for f in dataclasses.fields(_abinit.AbinitConfig) if f.name in DEFAULTS]
_REFINE_KEYS = ("max_iterations", "relax_symmetry", "offset_step")  # refine_<key>: the hand-over's options


def as_config(config: AbinitRecipeConfig | dict) -> AbinitRecipeConfig:
    """``config`` as an :class:`AbinitRecipeConfig` (a dict is coerced; ``refine_options``: see the fields)."""
    if isinstance(config, AbinitRecipeConfig):  # (scripts pass dicts)
        return config
    d = dict(config)
    nested = dict(d.pop("refine_options", None) or {})  # the older nested form of the refine_* options
    if set(nested) - set(_REFINE_KEYS):
        raise InputError(f"cryosparc-abinit: no options refine_options {sorted(set(nested) - set(_REFINE_KEYS))}")
    d.update({f"refine_{k}": v for k, v in nested.items() if v is not None})
    return build_config(AbinitRecipeConfig, "cryosparc-abinit", None, d)


def refine_handover(particles: Particles, volume: torch.Tensor, cfg: AbinitRecipeConfig | dict,
                    run: RunFolder | None = None, device=None, progress: bool = False, resume: bool = False,
                    centre: bool = True) -> tuple[autorefine.RefineResult, np.ndarray]:
    """Step 2 for K = 1 (module docstring): ``volume (D, D, D)`` centred on its centre of mass (unless
    ``centre`` is False), then auto-refinement from it low-passed to ``handover_lowpass`` Å with
    ``offset_range = max_shift`` px. Returns the refinement result and the centring shift (voxels, z y x)."""
    from .refine3d import iteration_writer

    cfg = as_config(cfg)
    rcfg = autorefine.RefineConfig(seed=cfg.seed, offset_range=cfg.max_shift, initial_lowpass=cfg.handover_lowpass,
                                   **{k: getattr(cfg, f"refine_{k}") for k in _REFINE_KEYS})
    start, moved = center_volume(volume) if centre else (volume, np.zeros(3))
    res = autorefine.auto_refine(particles, start, config=rcfg, run=run, device=device, progress=progress,
                                 resume=resume, on_iteration=None if run is None else iteration_writer(run, particles))
    return res, np.asarray(moved)


def _hand_over(particles: Particles, vols: torch.Tensor, cfg: AbinitRecipeConfig, run, device, progress) -> dict:
    """Step 2: refinement (K = 1) or Class3D (K > 1); the :class:`MethodOutputs` fields it sets."""
    k = vols.shape[0]
    if k == 1:
        sub = RunFolder(run.path("refine"))
        res, moved = refine_handover(particles, vols[0], cfg, sub, device, progress,
                                     resume=cfg.resume and sub.path("checkpoint.pt").is_file())
        m = {"handover_centring_shift_voxels_zyx": moved.tolist(), "resolution_halfmap_0143_A": res.resolution,
             "fsc_halfmaps": np.asarray(res.fsc).tolist(), "refine_iterations": len(res.history),
             "refine_converged": res.converged,
             **({} if res.relax_axis is None else {"relax_symmetry_axis_xyz": [float(x) for x in res.relax_axis]})}
        return {"volume": res.volume, "half_maps": res.half_maps, "rotations": res.rotations, "shifts": res.shifts,
                "half_labels": np.asarray(res.half), "history": [{**h, "stage": "refine"} for h in res.history],
                "metrics": m}
    from . import class3d

    sub = RunFolder(run.path("class3d"))
    ccfg = {"n_classes": k, "n_iterations": cfg.class3d_iterations, "healpix_order": 2,
            "offset_range": float(cfg.max_shift), "seed": cfg.seed, "initial_lowpass": float(cfg.handover_lowpass)}
    starts = center_volumes(vols)  # an emptied class restarts as the mean of the others
    cres = class3d.classify(particles, starts, ccfg, sub, device, progress,
                            resume=cfg.resume and sub.path("checkpoint.pt").is_file())
    out = class3d.outputs(cres, particles.pixel_size)
    return {"volumes": out.volumes, "rotations": out.rotations, "shifts": out.shifts, "labels": out.labels,
            "particle_columns": out.particle_columns, "history": [{**h, "stage": "class3d"} for h in out.history],
            "metrics": {key: out.metrics[key] for key in ("class_prior", "class_counts")}}


def fit(particles: Particles, known, run: RunFolder, config: AbinitRecipeConfig, device=None, progress: bool = True):
    """Registry entry point (module docstring)."""
    from .class3d import read_start_map
    from .registry import MethodOutputs

    cfg = as_config(config)
    if particles.ctf is None:
        raise InputError(f"{particles.name}: no CTF parameters; ab initio here needs them")
    init = read_start_map(cfg.init_map, particles.box_size)
    if init is not None:
        init = init.reshape(-1, *init.shape[-3:]).expand(cfg.n_classes, -1, -1, -1)
    ab_cfg = _abinit.AbinitConfig(**{k: getattr(cfg, k) for k in _ABINIT_KEYS})  # stage 1, checkpointed
    ab = _abinit.run_ab_initio(particles, ab_cfg, run.path(CHECKPOINT) if run is not None else None,
                               cfg.checkpoint_every, init, device, progress, cfg.resume)
    vols = ab.result_volumes().float().cpu()
    out = MethodOutputs(pixel_size=particles.pixel_size, volumes=vols,
                        extra_volumes={f"abinit_class_{j + 1:03d}": v for j, v in enumerate(vols)},
                        history=[{**h, "stage": "abinit"} for h in ab.state.history],
                        metrics={"n_classes": vols.shape[0], "abinit_iterations": ab.state.iteration,
                                 "abinit_box": ab.size, "abinit_pixel_size": ab.pixel_size})
    if not cfg.refine:
        a = ab.assign()
        out.rotations, out.shifts, out.labels = a["rotations"], a["shifts"], a["labels"].numpy()
        out.volume = vols[0] if vols.shape[0] == 1 else None
        return out
    fields = _hand_over(particles, vols, cfg, run, device, progress)
    out.history = out.history + fields.pop("history")
    out.metrics.update(fields.pop("metrics"))
    return dataclasses.replace(out, **fields)

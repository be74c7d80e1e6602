"""``cryosparc-abinit`` and ``cryosparc-abinit-hetero``: ab initio from random starts, then refinement.

Composition (no physics here), after Punjani et al. 2017 (cryoSPARC; METHODS.md):

1. ab initio (:mod:`cryolens.inference.abinit`, whose docstring states the step-size, batch-size and
   resolution schedules): K seeded random starts — or ``init_map`` (a warm start) — and stochastic
   MAP optimisation over mini-batches with poses and classes marginalised on a grid;
2. hand-over, each map first centred on its centre of mass (an ab initio map's origin is free and drifts
   by a few voxels, which eats into the refinement's shift range; cryoSPARC centres its ab initio
   structures too): homogeneous (K = 1) → gold-standard auto-refinement
   (:func:`cryolens.inference.autorefine.auto_refine`, RELION-style, from the ab initio map low-passed
   to ``handover_lowpass`` Å, default 30 Å, cryoSPARC's refinement default; ``refine_options`` override
   its :class:`RefineConfig`); heterogeneous (K > 1, ``cryosparc-abinit-hetero``) → Class3D
   (:mod:`cryolens.methods.class3d`) from the K ab initio maps low-passed the same way,
   ``class3d_iterations`` iterations at 15°. On the pseudo-symmetric 4E43 dimer a hand-over at the ab
   initio's own resolution (12 Å) keeps the asymmetry it found: benchmarks/RESULTS.md.
   ``refine = False`` stops after step 1 (poses and classes from one last pass over all images).

Checkpoints: the ab initio state every ``checkpoint_every`` iterations (``abinit_checkpoint.pt``), the
refinement's and the classification's their own in ``refine/`` and ``class3d/``; ``resume`` continues
from whichever stage was reached. Outputs: ``abinit_class_001.mrc`` …, ``map.mrc`` + half maps (K = 1,
refined), ``class_*.mrc`` (K > 1), ``particles.star`` (final poses; ``rlnClassNumber`` for K > 1),
``metrics.json``, plots (resolution limit, evidence and class populations per ab initio iteration;
FSC and resolution per refinement iteration), ``report.html`` (by the CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.shift import center_volume
from ..inference.abinit import AbInitio, AbinitConfig
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.particles import Particles
from ..io.runfolder import RunFolder

if TYPE_CHECKING:
    from ..inference.autorefine import RefineResult

DEFAULTS = {"n_classes": 1, "n_iterations": 300, "batch_size": 90, "final_batch_size": 300,
            "initial_resolution": 35.0, "final_resolution": 12.0, "grid_level": 2, "max_shift": 3.0,
            "shift_step": 1.0, "eta_min": 0.1, "tau2_fudge": 4.0, "seed": 0, "init_map": None, "refine": True,
            "refine_options": {}, "handover_lowpass": 30.0, "class3d_iterations": 10, "checkpoint_every": 10,
            "resume": False}

_ABINIT_KEYS = ("n_classes", "n_iterations", "batch_size", "final_batch_size", "initial_resolution",
                "final_resolution", "grid_level", "max_shift", "shift_step", "eta_min", "tau2_fudge", "seed")
CHECKPOINT = "abinit_checkpoint.pt"


def run_ab_initio(particles: Particles, cfg: dict, run: RunFolder | None, init_volumes: torch.Tensor | None = None,
                  device=None, progress: bool = True, resume: bool = False) -> AbInitio:
    """Stage 1 with checkpoints every ``cfg["checkpoint_every"]`` iterations (and at the end)."""
    ab_cfg = AbinitConfig(**{k: cfg[k] for k in _ABINIT_KEYS})
    ab = AbInitio(particles, ab_cfg, device)
    ckpt = run.path(CHECKPOINT) if run is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        saved = load_checkpoint(ckpt)
        if saved["config"] != {k: cfg[k] for k in _ABINIT_KEYS}:
            raise InputError(f"{ckpt}: made with different ab initio options")
        ab.load(saved["state"])
    else:
        ab.init(init_volumes)
    every = max(1, int(cfg["checkpoint_every"]))
    with tqdm(total=ab_cfg.n_iterations, initial=ab.state.iteration, desc="ab initio", disable=not progress) as bar:
        while not ab.done:
            rec = ab.step()
            bar.update(1)
            bar.set_postfix(res=f"{rec['resolution_A']:.1f}Å", maxw=f"{rec['mean_max_weight']:.2f}")
            if ckpt is not None and (ab.state.iteration % every == 0 or ab.done):
                save_checkpoint(ckpt, {"config": {k: cfg[k] for k in _ABINIT_KEYS}, "state": ab.state.to_dict()})
    return ab


def refine_handover(particles: Particles, volume: torch.Tensor, cfg: dict, run: RunFolder | None = None,
                    device=None, progress: bool = False, resume: bool = False,
                    centre: bool = True) -> tuple[RefineResult, np.ndarray]:
    """Step 2 for K = 1 (module docstring): ``volume (D, D, D)`` centred on its centre of mass (unless
    ``centre`` is False), then auto-refinement from it low-passed to ``cfg["handover_lowpass"]`` Å with
    ``offset_range = cfg["max_shift"]`` px and ``cfg["refine_options"]``. Returns the
    :class:`~cryolens.inference.autorefine.RefineResult` and the centring shift (voxels, z y x)."""
    from ..inference.autorefine import RefineConfig, auto_refine

    rcfg = RefineConfig.from_dict({"seed": cfg["seed"], "offset_range": cfg["max_shift"],
                                   "initial_lowpass": float(cfg["handover_lowpass"]), **dict(cfg["refine_options"])})
    start, moved = center_volume(volume) if centre else (volume, np.zeros(3))
    res = auto_refine(particles, start, config=rcfg, run=run, device=device, progress=progress, resume=resume)
    return res, np.asarray(moved)


def _write_abinit(ab: AbInitio, run: RunFolder) -> torch.Tensor:
    from ..analysis.class_plots import plot_class_populations, plot_history
    from ..io.mrc import write_volume

    vols = ab.result_volumes().float().cpu()
    for k, v in enumerate(vols):
        write_volume(run.path(f"abinit_class_{k + 1:03d}.mrc"), v.numpy(), ab.particles.pixel_size)
    h = ab.state.history
    plot_history(h, {"resolution_A": "resolution limit"}, run.path("abinit_resolution.png"),
                 "ab initio: resolution limit per iteration", "Å")
    plot_history(h, {"mean_max_weight": "mean largest posterior weight"}, run.path("abinit_posterior.png"),
                 "ab initio: pose certainty per iteration", "")
    if vols.shape[0] > 1:
        plot_class_populations(h, run.path("abinit_class_populations.png"))
    return vols


def fit(particles: Particles, known, run: RunFolder, config: dict, device=None, progress: bool = True):
    """Registry entry point (module docstring)."""
    from ..io.mrc import read_volume
    from ..io.star import write_star
    from .registry import MethodOutputs

    cfg = {**DEFAULTS, **config}
    if particles.ctf is None:
        raise InputError(f"{particles.name}: no CTF parameters; ab initio here needs them")
    resume = bool(cfg["resume"])
    init = None
    if cfg["init_map"]:
        arr, _ = read_volume(cfg["init_map"])
        init = torch.from_numpy(np.ascontiguousarray(arr)).float()
        if tuple(init.shape[-3:]) != (particles.box_size,) * 3:
            raise InputError(f"{cfg['init_map']}: map is {tuple(init.shape)}, "
                             f"particles need {(particles.box_size,) * 3}")
        init = init.reshape(-1, *init.shape[-3:]).expand(int(cfg["n_classes"]), -1, -1, -1)
    ab = run_ab_initio(particles, cfg, run, init, device, progress, resume)
    vols = _write_abinit(ab, run)
    k = vols.shape[0]
    metrics: dict = {"n_images": len(particles), "n_classes": k, "abinit_iterations": ab.state.iteration,
                     "abinit_box": ab.size, "abinit_pixel_size": ab.pixel_size,
                     "abinit_history": ab.state.history}
    px = particles.pixel_size
    out = MethodOutputs(pixel_size=px, volumes=vols)
    final = particles.subset(np.arange(len(particles)))
    if not cfg["refine"]:
        a = ab.assign()
        out.rotations, out.shifts, out.labels = a["rotations"], a["shifts"], a["labels"].numpy()
        out.volume = vols[0] if k == 1 else None
    elif k == 1:
        from ..analysis.plots import plot_fsc
        from ..io.mrc import write_volume

        sub = RunFolder(run.path("refine"))
        res, moved = refine_handover(particles, vols[0], cfg, sub, device, progress,
                                     resume=resume and sub.path("checkpoint.pt").is_file())
        metrics["handover_centring_shift_voxels_zyx"] = moved.tolist()
        out.volume, out.half_maps = res.volume, res.half_maps
        out.rotations, out.shifts = res.rotations, res.shifts
        write_volume(run.path("map.mrc"), res.volume.numpy(), px)
        write_volume(run.path("half1.mrc"), res.half_maps[0].numpy(), px)
        write_volume(run.path("half2.mrc"), res.half_maps[1].numpy(), px)
        plot_fsc({"half-map FSC": res.fsc}, px, particles.box_size, run.path("fsc.png"))
        from ..analysis.class_plots import plot_history
        plot_history(res.history, {"resolution_A": "half-map resolution (0.143)"}, run.path("refine_resolution.png"),
                     "refinement: resolution per iteration", "Å")
        metrics.update(resolution_halfmap_0143_A=res.resolution, fsc_halfmaps=np.asarray(res.fsc).tolist(),
                       refine_iterations=len(res.history), refine_converged=res.converged)
        if res.relax_axis is not None:
            metrics["relax_symmetry_axis_xyz"] = [float(x) for x in res.relax_axis]
    else:
        from .class3d import classify, write_outputs

        sub = RunFolder(run.path("class3d"))
        ccfg = {"n_classes": k, "n_iterations": int(cfg["class3d_iterations"]), "healpix_order": 2,
                "offset_range": float(cfg["max_shift"]), "seed": int(cfg["seed"]),
                "initial_lowpass": float(cfg["handover_lowpass"])}
        starts = torch.stack([center_volume(v)[0] for v in vols])
        cres = classify(particles, starts, ccfg, sub, device, progress,
                        resume=resume and sub.path("checkpoint.pt").is_file())
        cm = write_outputs(cres, particles, run)
        out.volumes, out.rotations, out.shifts, out.labels = cres.volumes, cres.rotations, cres.shifts, cres.labels
        metrics.update(class_prior=cm["class_prior"], class_counts=cm["class_counts"], class3d_history=cm["history"])
    if k == 1 or not cfg["refine"]:  # (Class3D's write_outputs wrote the STAR of the hetero hand-over)
        final.rotations, final.shifts = out.rotations.float(), out.shifts.float()
        if k > 1:
            final.extra = {**final.extra, "rlnClassNumber": np.asarray(out.labels) + 1}
        write_star(run.path("particles.star"), final)
    run.write_metrics(metrics)
    out.metrics = {key: v for key, v in metrics.items() if not key.endswith("history")}
    return out

"""``relion-class3d``: RELION-style 3D classification (Class3D) — K maps, poses searched, CTF known.

Composition (no physics here): the Class3D EM iteration of :mod:`cryolens.inference.classes`
(posterior over class × rotation × shift with class priors, per-class weighted back-projection with
the ``T``-scaled ``τ²`` prior, σ² and class-prior updates), iterated ``n_iterations`` times
(RELION's default 25) from a start map, with RELION's defaults (Scheres 2012; RELION 3.1 GUI):

- start: the ``--init-map`` low-passed to ``initial_lowpass`` (60 Å, ``--ini_high``), one copy per
  class; in the first iteration every particle is given to a random class (seeded; RELION's random
  division into K subsets), so the classes start from different random subsets (``K`` distinct
  start maps ``(K, D, D, D)`` start with uniform class priors instead); without a start
  map, a homogeneous ab initio map (:mod:`cryolens.inference.abinit`, ``abinit_iterations``) is made first;
- sampling: SO(3) grid level ``healpix_order`` (3 = 7.5°, RELION's Class3D default; an exhaustive
  grid, RELION's adaptive oversampling is not done — level 2, 15°, is 8× cheaper); offsets within
  ``offset_range`` px (circular, RELION's) in steps of ``offset_step``;
- frequency limit: the E-step uses shells up to the current resolution + ``incr_size`` (10); the
  current resolution of a class is where its ``data_vs_prior`` falls below 1;
- working box: each iteration works on images and maps Fourier-cropped to ``2·(k_max + work_margin)``
  (RELION's ``current_size``), so its cost follows the resolution, not the box;
- ``tau2_fudge`` T = 4 (``τ²`` from the current maps' power; where it is zero — above the start map's
  low-pass — RELION's weak prior); no prior below shell ``minres_map`` (5, RELION's); ``modal``: hard
  assignments (the modal variant);
- ``skip_align`` (RELION's ``--skip_align``; off by default): every image keeps the pose it comes with
  (e.g. from a consensus refinement) and only the class is inferred
  (:func:`~cryolens.inference.classes.class_em_iteration_fixed_poses`), in the same working box.

Each iteration is checkpointed (``checkpoint.pt``, :mod:`cryolens.io.checkpoint`): ``resume`` continues
from it and finishes with the same result as an uninterrupted run. Outputs: ``class_001.mrc`` …,
``particles.star`` (poses of the best class and ``rlnClassNumber``, 1-based, RELION-readable),
``metrics.json``, plots (class populations, resolution and log-likelihood per iteration, sections).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.fft import fft2_centered
from ..imaging.grids import lowpass_volume, shell_index_2d, shell_sum
from ..imaging.so3_grid import so3_grid
from ..inference.classes import ClassEMResult, class_em_iteration, class_em_iteration_fixed_poses
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..inference.posterior import translation_grid

DEFAULTS = {"n_classes": 2, "n_iterations": 25, "tau2_fudge": 4.0, "healpix_order": 3, "offset_range": 5.0,
            "offset_step": 1.0, "initial_lowpass": 60.0, "incr_size": 10, "mass": 0.999, "max_significant": 200,
            "modal": False, "pad": 2, "batch_size": 64, "seed": 0, "init_map": None, "abinit_iterations": 150,
            "work_margin": 4, "minres_map": 5, "skip_align": False, "resume": False}


@dataclass
class ClassifyResult:
    """Class maps ``(K, D, D, D)``, class priors ``(K,)``, per image: ``labels (N,)`` 0-based class of the
    MAP (class, pose), ``rotations (N, 3, 3)``, ``shifts (N, 2)`` px, ``class_probability (N, K)``,
    ``max_weight (N,)``; the per-iteration ``history``."""

    volumes: torch.Tensor
    class_prior: torch.Tensor
    labels: np.ndarray
    rotations: torch.Tensor
    shifts: torch.Tensor
    class_probability: torch.Tensor
    max_weight: torch.Tensor
    history: list[dict] = field(default_factory=list)


def image_power_spectrum(particles: Particles, n: int = 1000, seed: int = 0, device=None) -> torch.Tensor:
    """``(D//2+1,)`` float32 mean power per Fourier component and shell of up to ``n`` random images:
    RELION's initial noise estimate ``σ²`` (it overestimates by the signal, small at low SNR)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(particles))[:min(n, len(particles))])
    d = particles.box_size
    shells = shell_index_2d(d, device=device)
    acc = torch.zeros(d // 2 + 1, dtype=torch.float64, device=device)
    for _, images in iterate_batches(particles, 256, idx):
        acc += shell_sum(fft2_centered(images.to(device)).abs().square().sum(0).double(), shells, d // 2 + 1)
    npix = shell_sum(torch.ones(d, d, dtype=torch.float64, device=device), shells, d // 2 + 1)
    return (acc / (npix * idx.size)).float()


def _resolution_shell(data_vs_prior: torch.Tensor) -> int:
    """Highest shell before ``data_vs_prior`` first drops below 1 (best class)."""
    best = 0
    for row in data_vs_prior:
        below = torch.nonzero(row[1:] < 1).reshape(-1)
        best = max(best, int(below[0]) if below.numel() else row.shape[0] - 1)
    return max(best, 1)


def _initial_volumes(particles: Particles, init_volume: torch.Tensor | None, cfg: dict, device,
                     progress: bool) -> torch.Tensor:
    k, px = int(cfg["n_classes"]), particles.pixel_size
    if init_volume is None:
        from ..inference.abinit import AbinitConfig, ab_initio

        vols, _ = ab_initio(particles, AbinitConfig(n_classes=1, n_iterations=int(cfg["abinit_iterations"]),
                                                    seed=int(cfg["seed"]),
                                                    max_shift=float(cfg["offset_range"])),
                            device=device, progress=progress)
        init_volume = vols[0]
    v = init_volume.to(device=device, dtype=torch.float32)
    if v.dim() == 3:
        v = v[None].expand(k, *v.shape)
    if v.shape[0] != k:
        raise InputError(f"start maps: {v.shape[0]} given for {k} classes")
    return torch.stack([lowpass_volume(x, float(cfg["initial_lowpass"]), px, width_shells=1.0) for x in v])


def classify(particles: Particles, init_volume: torch.Tensor | None, config: dict | None = None, run=None,
             device=None, progress: bool = True, resume: bool = False,
             on_iteration: Callable[[int, ClassEMResult], None] | None = None) -> ClassifyResult:
    """RELION-style Class3D of ``particles`` (CTF used; poses searched, or kept with ``skip_align``) —
    module docstring.

    init_volume: ``(D, D, D)`` start map (copied to every class) or ``(K, D, D, D)``, or ``None``
    (ab initio first). config: :data:`DEFAULTS` overrides. run: a RunFolder for the checkpoint (and
    nothing else; :func:`write_outputs` writes the results). resume: continue from ``run``'s checkpoint.
    on_iteration: called after each iteration with its number (1-based) and its
    :class:`~cryolens.inference.classes.ClassEMResult` (e.g. to follow the labels per iteration).
    """
    cfg = {**DEFAULTS, **(config or {})}
    dev = torch.device(device) if device is not None else torch.device("cpu")
    d, n, k = particles.box_size, len(particles), int(cfg["n_classes"])
    if particles.ctf is None:
        raise InputError(f"{particles.name}: no CTF parameters; relion-class3d needs them")
    ckpt = run.path("checkpoint.pt") if run is not None else None
    skip_align = bool(cfg["skip_align"])
    if skip_align and particles.rotations is None:
        raise InputError(f"{particles.name}: no poses (rlnAngleRot/Tilt/Psi); skip_align keeps each image's "
                         "given pose, so it needs them")
    rot = particles.rotations.to(dev) if skip_align else so3_grid(int(cfg["healpix_order"]), device=dev)
    shifts = translation_grid(float(cfg["offset_range"]), float(cfg["offset_step"]), circular=True, device=dev)
    if resume and ckpt is not None and ckpt.is_file():
        st = load_checkpoint(ckpt, map_location=dev)
        if int(st["n_images"]) != n or tuple(st["volumes"].shape) != (k, d, d, d):
            raise InputError(f"{ckpt}: checkpoint is for {st['n_images']} images / {tuple(st['volumes'].shape)}, "
                             f"not this run ({n} images, {k} classes of {d}³)")
    else:
        vols = _initial_volumes(particles, init_volume, cfg, dev, progress)
        if init_volume is not None and init_volume.dim() == 4:  # K distinct starts: uniform priors
            first = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:  # one start copied K times: a random class per particle in the first iteration
            rng = np.random.default_rng(int(cfg["seed"]))
            first = torch.zeros(n, k, dtype=torch.float64)
            first[torch.arange(n), torch.as_tensor(rng.integers(0, k, n))] = 1.0
        k0 = min(d // 2, round(d * particles.pixel_size / float(cfg["initial_lowpass"])) + int(cfg["incr_size"]))
        st = {"iteration": 0, "n_images": n, "volumes": vols, "sigma2": image_power_spectrum(particles, seed=int(
            cfg["seed"]), device=dev), "class_prior": first,
            "k_max": int(k0), "history": [], "labels": None, "elapsed_s": 0.0}
    n_it = int(cfg["n_iterations"])
    bar = tqdm(total=n_it * n, initial=int(st["iteration"]) * n, desc="Class3D", unit="img", disable=not progress)
    res = st.get("last")
    while st["iteration"] < n_it:
        t0, k_used = time.time(), int(st["k_max"])
        work = min(d, 2 * (k_used + int(cfg["work_margin"])))
        if skip_align:
            res = class_em_iteration_fixed_poses(particles, st["volumes"], st["sigma2"], st["class_prior"],
                                                 tau2_fudge=float(cfg["tau2_fudge"]), k_max=k_used,
                                                 pad=int(cfg["pad"]), batch_size=int(cfg["batch_size"]), device=dev,
                                                 modal=bool(cfg["modal"]), minres_map=int(cfg["minres_map"]),
                                                 work_size=work, progress=bar)
        else:
            res = class_em_iteration(particles, st["volumes"], st["sigma2"], rot, shifts, st["class_prior"],
                                     tau2_fudge=float(cfg["tau2_fudge"]), k_max=k_used, work_size=work,
                                     pad=int(cfg["pad"]), batch_size=int(cfg["batch_size"]), device=dev,
                                     mass=float(cfg["mass"]), max_significant=int(cfg["max_significant"]),
                                     modal=bool(cfg["modal"]), minres_map=int(cfg["minres_map"]), progress=bar)
        labels = res.map_class.cpu()
        changed = None if st["labels"] is None else float((labels != st["labels"]).double().mean())
        res_shell = _resolution_shell(res.data_vs_prior)
        st.update(iteration=st["iteration"] + 1, volumes=res.volumes, sigma2=res.sigma2,
                  class_prior=res.class_prior, labels=labels,
                  k_max=int(min(d // 2, res_shell + int(cfg["incr_size"]))),
                  elapsed_s=float(st["elapsed_s"]) + time.time() - t0)
        st["history"].append({"iteration": st["iteration"], "class_prior": res.class_prior.tolist(),
                              "k_max_used": k_used, "k_max_next": st["k_max"],
                              "resolution_A": d * particles.pixel_size / res_shell,
                              "log_likelihood": res.log_likelihood, "changed_fraction": changed,
                              "mean_max_weight": float(res.max_weight.double().mean()),
                              "elapsed_s": float(st["elapsed_s"])})
        st["last"] = {"rotation_index": res.map_rotation_index.cpu(), "shift": res.map_shift.cpu(),
                      "class_probability": res.class_probability.cpu(), "max_weight": res.max_weight.cpu()}
        if ckpt is not None:
            save_checkpoint(ckpt, {key: v for key, v in st.items()})
        if on_iteration is not None:
            on_iteration(int(st["iteration"]), res)
    bar.close()
    last = st["last"]
    return ClassifyResult(volumes=st["volumes"].float().cpu(), class_prior=torch.as_tensor(st["class_prior"]).double(),
                          labels=st["labels"].numpy().astype(np.int64),
                          rotations=rot[last["rotation_index"].to(dev)].cpu(), shifts=last["shift"].float(),
                          class_probability=last["class_probability"], max_weight=last["max_weight"],
                          history=list(st["history"]))


def write_outputs(result: ClassifyResult, particles: Particles, run, title: str = "relion-class3d") -> dict:
    """Class maps, ``particles.star`` (poses, ``rlnClassNumber`` 1-based, ``rlnMaxValueProbDistribution``),
    metrics and plots into ``run``; returns the metrics."""
    from ..analysis.class_plots import plot_class_populations, plot_class_sections, plot_history
    from ..io.mrc import write_volume
    from ..io.star import write_star

    px = particles.pixel_size
    for k, v in enumerate(result.volumes):
        write_volume(run.path(f"class_{k + 1:03d}.mrc"), v.numpy(), px)
    out = particles.subset(np.arange(len(particles)))
    out.rotations, out.shifts = result.rotations.float(), result.shifts.float()
    out.extra = {**out.extra, "rlnClassNumber": result.labels + 1,
                 "rlnMaxValueProbDistribution": result.max_weight.double().numpy()}
    write_star(run.path("particles.star"), out)
    h = result.history
    counts = np.bincount(result.labels, minlength=result.volumes.shape[0])
    metrics = {"n_images": len(particles), "n_classes": int(result.volumes.shape[0]),
               "class_prior": result.class_prior.tolist(), "class_counts": counts.tolist(),
               "resolution_A": h[-1]["resolution_A"] if h else None, "iterations": len(h), "history": h}
    plot_class_populations(h, run.path("class_populations.png"))
    plot_history(h, {"resolution_A": "resolution (data vs prior = 1)"}, run.path("resolution.png"),
                 "resolution per iteration", "Å")
    plot_history(h, {"log_likelihood": "log-likelihood"}, run.path("log_likelihood.png"),
                 "marginal log-likelihood per iteration", "")
    plot_class_sections(result.volumes.numpy(), run.path("class_sections.png"), counts / max(1, counts.sum()))
    run.write_metrics(metrics)
    return metrics


def fit(particles: Particles, known, run, config: dict, device=None, progress: bool = True):
    """Registry entry point: Class3D with ``config`` (:data:`DEFAULTS`; ``init_map`` a path or ``None``)."""
    from ..io.mrc import read_volume
    from .registry import MethodOutputs

    init = None
    if config.get("init_map"):
        arr, _ = read_volume(config["init_map"])
        init = torch.from_numpy(np.ascontiguousarray(arr)).float()
        if tuple(init.shape[-3:]) != (particles.box_size,) * 3:
            raise InputError(f"{config['init_map']}: map is {tuple(init.shape)}, particles need "
                             f"{(particles.box_size,) * 3}")
    result = classify(particles, init, config, run, device, progress, resume=bool(config.get("resume")))
    metrics = write_outputs(result, particles, run)
    return MethodOutputs(pixel_size=particles.pixel_size, volumes=result.volumes, rotations=result.rotations,
                         shifts=result.shifts, labels=result.labels,
                         metrics={k: v for k, v in metrics.items() if k != "history"})

"""The Class3D schedule: RELION-style 3D classification iterated from a start map, with a typed state.

Each iteration is one :func:`~cryolens.inference.classes.class_em_iteration` (poses searched on the SO(3)
grid ``healpix_order`` × a circular offset grid) or :func:`~cryolens.inference.classes.class_em_iteration_fixed_poses`
(``skip_align``). What changes from one iteration to the next (:class:`ClassState`): the maps, ``σ²``, the
class priors (in the first iteration, from one start map copied ``K`` times, a seeded random one-hot
class per particle, RELION's random division into ``K`` subsets, of equal sizes: :func:`random_split`), and
``k_max`` = the resolution shell (where the best class's ``data_vs_prior`` first falls below 1) +
``incr_size``; each iteration works on images and maps Fourier-cropped to ``2·(k_max + work_margin)``
(RELION's ``current_size``). Without a start map a homogeneous ab initio map
(:mod:`cryolens.inference.abinit`) is made first.

The options object ``cfg`` is the recipe's typed config (:class:`cryolens.methods.class3d.Class3DConfig`):
``n_classes, n_iterations, tau2_fudge, healpix_order, offset_range, offset_step, initial_lowpass,
incr_size, mass, max_significant, modal, pad, batch_size, seed, abinit_iterations, work_margin,
minres_map, skip_align, reference_folds`` (``F ≥ 2``: each image's class likelihood against class maps made
without its fold's images, :mod:`~cryolens.inference.class_maps`; the folds are dealt from ``seed``; ``None``:
:func:`folds_of`). Each
iteration is checkpointed (``checkpoint.pt``) when a run folder is given; ``resume`` continues from it to the
same result as an uninterrupted run. Under ``torchrun`` every rank runs the schedule on its share of the images
(:mod:`~cryolens.inference.classes`); rank 0 writes the checkpoint, which any number of ranks can resume, and no
rank waits for it. Each iteration's history record holds ``"timing"``: per rank, the seconds of its E-step,
M-step, writes and waits in collectives
(:mod:`~cryolens.inference.rank_timing`).
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
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from . import classes
from .distributed import is_main, shard
from .estep import translation_grid
from .fold_refs import fold_of
from .image_cache import ShiftedImageCache, cache_bytes
from .rank_timing import RankTimer, TimingJoin
from .refine_state import CheckpointState


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


@dataclass
class ClassState(CheckpointState):
    """What one Class3D iteration reads and writes (the checkpoint is :meth:`to_dict`).

    iteration: iterations done; n_images: N. volumes: ``(K, D, D, D)`` maps. sigma2: ``(D//2+1,)``.
    class_prior: ``(K,)``, or ``(N, K)`` per image (the first iteration's random assignment). k_max:
    the next E-step's shell limit. history: one dict per iteration. labels: ``(N,)`` last MAP classes
    (``None`` before the first iteration). elapsed_s: wall time. last: the last iteration's per-image
    ``rotation_index``, ``shift``, ``class_probability``, ``max_weight``. fold_volumes: ``(F, K, D, D, D)`` the
    next E-step's leave-fold-out class maps (``cfg.reference_folds``; ``None`` without folds or before the first).
    folds_settled: the assignments have settled (:func:`_settle`): every later E-step uses the full class maps.
    """

    iteration: int
    n_images: int
    volumes: torch.Tensor
    sigma2: torch.Tensor
    class_prior: torch.Tensor
    k_max: int
    history: list = field(default_factory=list)
    labels: torch.Tensor | None = None
    elapsed_s: float = 0.0
    last: dict | None = None
    fold_volumes: torch.Tensor | None = None
    folds_settled: bool = False



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


def resolution_shell(data_vs_prior: torch.Tensor) -> int:
    """Highest shell before ``data_vs_prior`` first drops below 1 (best class)."""
    best = 0
    for row in data_vs_prior:
        below = torch.nonzero(row[1:] < 1).reshape(-1)
        best = max(best, int(below[0]) if below.numel() else row.shape[0] - 1)
    return max(best, 1)


def folds_of(cfg) -> int:
    """The leave-fold-out class references a run uses: ``cfg.reference_folds``, or when that is ``None`` 4 with
    ``skip_align`` and 0 (RELION's) when poses are searched."""
    if cfg.reference_folds is None:
        return 4 if cfg.skip_align else 0
    return int(cfg.reference_folds)


def random_split(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """``(n, k)`` float64 one-hot: the first iteration's random division of ``n`` particles into ``k``
    subsets of equal sizes (they differ by at most one): particle ``i`` goes to class ``π(i) mod k``, ``π`` a
    seeded random permutation of ``0 … n−1``.

    Equal, not independently drawn: with independent draws (RELION's ``rand() % K``) the sizes scatter by
    ``√(n (1/k)(1 − 1/k))`` (22 of 2,000 for k = 2; seed 0 gave 957 / 1,043); the larger subset's first map
    is the less noisy one, so the next E-step hands it more images and the class-prior update amplifies
    that (the 1AKE two-state set, benchmarks/RESULTS.md § "Class3D ``--skip_align``: an equal first
    split": priors 0.48 → 0.26 within four iterations, never back above 0.42). Equal subsets give no
    class that head start."""
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(n))
    first = torch.zeros(n, k, dtype=torch.float64)
    first[torch.arange(n), perm % k] = 1.0
    return first


def initial_volumes(particles: Particles, init_volume: torch.Tensor | None, cfg, device,
                    progress: bool) -> torch.Tensor:
    """``(K, D, D, D)`` start maps: ``init_volume`` (one copied ``K`` times, or ``K``), else a homogeneous
    ab initio map, low-passed to ``cfg.initial_lowpass`` Å."""
    k, px = cfg.n_classes, particles.pixel_size
    if init_volume is None:
        from .abinit import AbinitConfig, ab_initio

        vols, _ = ab_initio(particles, AbinitConfig(n_classes=1, n_iterations=cfg.abinit_iterations, seed=cfg.seed,
                                                    max_shift=float(cfg.offset_range)), device=device,
                            progress=progress)
        init_volume = vols[0]
    v = init_volume.to(device=device, dtype=torch.float32)
    if v.dim() == 3:
        v = v[None].expand(k, *v.shape)
    if v.shape[0] != k:
        raise InputError(f"start maps: {v.shape[0]} given for {k} classes")
    return torch.stack([lowpass_volume(x, float(cfg.initial_lowpass), px, width_shells=1.0) for x in v])


def _start(particles: Particles, init_volume, cfg, dev, progress: bool) -> ClassState:
    """The state before the first iteration (module docstring)."""
    d, n, k = particles.box_size, len(particles), cfg.n_classes
    vols = initial_volumes(particles, init_volume, cfg, dev, progress)
    if init_volume is not None and init_volume.dim() == 4:  # K distinct starts: uniform priors
        first = torch.full((k,), 1.0 / k, dtype=torch.float64)
    else:  # one start copied K times: a random class per particle in the first iteration
        first = random_split(n, k, cfg.seed)
    k0 = min(d // 2, round(d * particles.pixel_size / float(cfg.initial_lowpass)) + cfg.incr_size)
    return ClassState(iteration=0, n_images=n, volumes=vols,
                      sigma2=image_power_spectrum(particles, seed=cfg.seed, device=dev), class_prior=first,
                      k_max=int(k0))


def _resumed(ckpt, n: int, k: int, d: int, dev) -> ClassState:
    st = ClassState.from_dict(load_checkpoint(ckpt, map_location=dev))
    if int(st.n_images) != n or tuple(st.volumes.shape) != (k, d, d, d):
        raise InputError(f"{ckpt}: checkpoint is for {st.n_images} images / {tuple(st.volumes.shape)}, "
                         f"not this run ({n} images, {k} classes of {d}³)")
    return st


def _em_step(particles: Particles, st: ClassState, cfg, rot, shifts, dev, bar, timer,
             cache: ShiftedImageCache | None = None, fold: torch.Tensor | None = None) -> classes.ClassEMResult:
    """One Class3D EM iteration in the working box of ``st.k_max`` (its seconds counted into ``timer``;
    ``cache``: the fixed-pose images kept between iterations; ``fold``: each image's reference fold, or ``None``)."""
    k_used, d = int(st.k_max), particles.box_size
    work = min(d, 2 * (k_used + cfg.work_margin))
    common = {"tau2_fudge": float(cfg.tau2_fudge), "k_max": k_used, "pad": cfg.pad, "batch_size": cfg.batch_size,
              "device": dev, "modal": bool(cfg.modal), "minres_map": cfg.minres_map, "work_size": work, "progress": bar,
              "timer": timer, "new_tau2": False,  # τ² is computed again in the next iteration's box
              "fold": fold, "fold_volumes": st.fold_volumes if fold is not None else None}
    if cfg.skip_align:
        return classes.class_em_iteration_fixed_poses(particles, st.volumes, st.sigma2, st.class_prior,
                                                      image_cache=cache, **common)
    return classes.class_em_iteration(particles, st.volumes, st.sigma2, rot, shifts, st.class_prior,
                                      mass=float(cfg.mass), max_significant=cfg.max_significant, **common)


def _advance(st: ClassState, res: classes.ClassEMResult, cfg, d: int, px: float, t0: float) -> None:
    """The schedule: the new maps, σ², priors, ``k_max`` and the history record of an iteration."""
    labels = res.map_class.cpu()
    changed = None if st.labels is None else float((labels != st.labels).double().mean())
    res_shell, k_used = resolution_shell(res.data_vs_prior), st.k_max
    st.iteration, st.volumes, st.sigma2, st.class_prior, st.labels = (st.iteration + 1, res.volumes, res.sigma2,
                                                                      res.class_prior, labels)
    st.fold_volumes = res.fold_volumes
    st.k_max = int(min(d // 2, res_shell + cfg.incr_size))
    st.elapsed_s = float(st.elapsed_s) + time.time() - t0
    st.history.append({"iteration": st.iteration, "class_prior": res.class_prior.tolist(), "k_max_used": k_used,
                       "k_max_next": st.k_max, "resolution_A": d * px / res_shell,
                       "log_likelihood": res.log_likelihood, "changed_fraction": changed,
                       "mean_max_weight": float(res.max_weight.double().mean()), "elapsed_s": float(st.elapsed_s)})
    st.last = {"rotation_index": res.map_rotation_index.cpu(), "shift": res.map_shift.cpu(),
               "class_probability": res.class_probability.cpu(), "max_weight": res.max_weight.cpu()}


def _settle(st: ClassState, cfg, n_folds: int) -> None:
    """With ``n_folds ≥ 2`` leave-fold-out references, once fewer than ``cfg.settle_fraction`` of the images changed
    class in the last iteration the classes have formed: the fold maps are dropped and every later E-step scores each
    image against the full class maps (all the images, RELION's references; docs/METHODS.md)."""
    changed, folds = st.history[-1]["changed_fraction"], n_folds >= 2
    st.history[-1]["reference_folds"] = n_folds if folds and not st.folds_settled else 0
    if folds and not st.folds_settled and changed is not None and changed < cfg.settle_fraction:
        st.folds_settled, st.fold_volumes = True, None


def classify(particles: Particles, init_volume: torch.Tensor | None, cfg, run=None, device=None,
             progress: bool = True, resume: bool = False,
             on_iteration: Callable[[int, classes.ClassEMResult], None] | None = None) -> ClassifyResult:
    """RELION-style Class3D of ``particles`` (CTF used; poses searched, or kept with ``cfg.skip_align``).

    init_volume: ``(D, D, D)`` start map (copied to every class) or ``(K, D, D, D)``, or ``None`` (ab
    initio first). cfg: the options (module docstring). run: a RunFolder for the checkpoint only.
    resume: continue from ``run``'s checkpoint. on_iteration: called after each iteration with its
    number (1-based) and its :class:`~cryolens.inference.classes.ClassEMResult`.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    d, n, k = particles.box_size, len(particles), cfg.n_classes
    progress = progress and is_main()
    if particles.ctf is None:
        raise InputError(f"{particles.name}: no CTF parameters; relion-class3d needs them")
    ckpt = run.path("checkpoint.pt") if run is not None else None
    if cfg.skip_align and particles.rotations is None:
        raise InputError(f"{particles.name}: no poses (rlnAngleRot/Tilt/Psi); skip_align keeps each image's "
                         "given pose, so it needs them")
    rot = particles.rotations.to(dev) if cfg.skip_align else so3_grid(cfg.healpix_order, device=dev)
    shifts = translation_grid(float(cfg.offset_range), float(cfg.offset_step), circular=True, device=dev)
    resumed = resume and ckpt is not None and ckpt.is_file()
    st = _resumed(ckpt, n, k, d, dev) if resumed else _start(particles, init_volume, cfg, dev, progress)
    n_mine = len(shard(np.arange(n)))  # this rank's images per iteration (all in one process)
    bar = tqdm(total=cfg.n_iterations * n_mine, initial=st.iteration * n_mine, desc="Class3D", unit="img",
               disable=not progress)
    join = TimingJoin()  # the iterations' per-rank timing (rank_timing)
    cache = ShiftedImageCache(n, d, dev, st.volumes.dtype, cache_bytes(dev)) if cfg.skip_align else None
    n_folds = folds_of(cfg)
    fold = torch.as_tensor(fold_of(n, n_folds, cfg.seed)) if n_folds >= 2 else None
    while st.iteration < cfg.n_iterations:
        t0, timer = time.time(), RankTimer(dev)
        res = _em_step(particles, st, cfg, rot, shifts, dev, bar, timer, cache, None if st.folds_settled else fold)
        _advance(st, res, cfg, d, particles.pixel_size, t0)
        _settle(st, cfg, n_folds)
        join.finish(st.history, back=2)  # the previous iteration's
        with timer.part("write_s"):  # no barrier after: the checkpoint is written atomically
            if ckpt is not None and is_main():
                save_checkpoint(ckpt, st.to_dict())
            if on_iteration is not None and is_main():
                on_iteration(st.iteration, res)
        join.start(timer)
    bar.close()
    join.finish(st.history)  # (then rank 0's last writes are done)
    last = st.last
    return ClassifyResult(volumes=st.volumes.float().cpu(), class_prior=torch.as_tensor(st.class_prior).double(),
                          labels=st.labels.numpy().astype(np.int64),
                          rotations=rot[last["rotation_index"].to(dev)].cpu(), shifts=last["shift"].float(),
                          class_probability=last["class_probability"], max_weight=last["max_weight"],
                          history=list(st.history))

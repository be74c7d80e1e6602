"""Discrete heterogeneity: one Class3D EM iteration (RELION's Class3D, Scheres 2012, J. Struct. Biol.
180:519; docs/METHODS.md) with ``K`` volumes ``V_k`` — a schedule step over the EM core.

**E-step**: the posterior over (class, rotation, shift) of :func:`~cryolens.inference.estep.class_pose_posterior`
(class priors ``π_k``, uniform pose priors, significant set over ``(k, m, j)`` jointly, so a class that
explains an image badly contributes no insertions); **fixed poses** (RELION's ``--skip_align``,
:func:`class_em_iteration_fixed_poses`): each image keeps its given pose, only the class is hidden,
``P(k | Y_i) ∝ π_k exp(ℓ_ik)``; **modal** (``modal=True``): only the best ``(k, m, j)`` per image, weight 1
(hard-EM), class priors then the fraction of images assigned to each class.

**M-step** per class (:mod:`~cryolens.inference.mstep`): per-class weighted back-projection, map
``data / (weight + λ_k(s))`` with the prior of :func:`~cryolens.inference.prior.map_prior`
(``s = pad³ · T``, RELION's ``oversampling_correction · tau2_fudge``, ``T`` = ``--tau2_fudge``, default 4
for single particles; RELION's weak prior where ``τ²`` is zero; none below ``minres_map``). Without half
maps ``τ²_k(s)`` is, as RELION's (``MlModel::setFourierTransformMaps``, checked against its
``_rlnReferenceTau2``), the per-shell power of the projector's transform of class ``k``'s current map
(:func:`~cryolens.imaging.spectra.projector_power_spectrum`): a start map low-passed to zero keeps
~1e-4 … 1e-6 of the peak power above its cut-off there, so those shells can grow. So does RELION 3.1's:
its ``run_it001_model.star`` holds 2e-4 … 1e-6 of the peak above a 60 Å start's cut-off (the ~1e-35 of
``run_it000_model.star`` is the unpadded spectrum ``MlModel::initialiseDataVersusPrior`` writes for that
file only; every iteration's ``expectationSetup`` recomputes ``τ²`` from the projector), and a ``τ² > 0``,
however small, gets the ordinary prior there, not the weak one (benchmarks/RESULTS.md § "Class3D
``--skip_align``: an equal first split"). Class priors:
``π_k = (1/N) Σ_i P(k | Y_i)``. Noise: the posterior-weighted residual power
(:func:`~cryolens.inference.mstep.noise_power`).

**Many processes** (:mod:`~cryolens.inference.distributed`): each rank takes its share of the images;
the class accumulators, noise sums and class masses are all-reduced and the per-image records
gathered before the M-step, so every rank computes the same model.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..imaging.ctf import CTFParams
from ..imaging.fft import abs2, fft2_centered
from ..imaging.shift import phase_shift
from ..imaging.spectra import fourier_crop_images, power_spectrum, projector_power_spectrum, resize_volume  # noqa: F401
from ..io.particles import Particles
from .class_maps import class_maps, fold_class_maps, fold_slicers, fold_views, join_folds, working_maps
from .distributed import all_reduce_sum, gather_rows
from .em import batches
from .image_cache import ShiftedImageCache, fixed_pose_batches
from .estep import ClassPosePosterior, class_pose_posterior, slice_values  # noqa: F401
from .likelihood import ctf_images, log_normaliser, shell_weights, used_pixels
from .memory import em_sizes
from .mstep import NoiseStats, class_sums, insert_aggregates
from .reconstruct import FourierAccumulator


def _log_priors(class_prior: torch.Tensor | None, n_cls: int, device, dtype) -> torch.Tensor:
    """``log π`` ``(K,)`` or ``(N, K)`` (``−inf`` where a prior is 0); uniform when ``None``."""
    prior = (torch.full((n_cls,), 1.0 / n_cls, dtype=torch.float64) if class_prior is None
             else class_prior.double())
    if prior.shape[-1] != n_cls or prior.dim() > 2:
        raise ValueError(f"class_prior must be ({n_cls},) or (N, {n_cls}), got {tuple(prior.shape)}")
    return torch.where(prior > 0, torch.log(prior.clamp_min(1e-300)),
                       torch.full_like(prior, -math.inf)).to(device=device, dtype=dtype)


@dataclass
class ClassEMResult:
    """The outcome of one Class3D EM iteration over ``N`` images and ``K`` classes.

    volumes: ``(K, D, D, D)`` new maps. class_prior: ``(K,)`` new ``π_k``. sigma2: ``(D//2+1,)`` new noise
    power. tau2: ``(K, D//2+1)`` projector power spectra of the new maps (the next ``τ²``; ``None`` when the
    iteration was asked for none, ``new_tau2=False``: the next one computes it in its own box). regularisation:
    ``(K, D//2+1)`` the ``λ_k`` used. data_vs_prior: ``(K, D//2+1)`` shell mean of the accumulated
    weight ``Σ w C²`` over ``λ_k`` (RELION's ``data_vs_prior``: where it falls below 1 the prior
    dominates — RELION's resolution estimate of a class). log_likelihood: ``Σ_i log Z_i + N · log_normaliser`` under the
    *input* volumes, priors and σ². class_probability: ``(N, K)``. labels: ``(N,)`` most probable class.
    map_rotation_index, map_shift_index: ``(N,)`` the MAP pose; map_shift: ``(N, 2)`` px;
    max_weight: ``(N,)``; n_significant: ``(N,)``. fold_volumes: ``(F, K, D, D, D)`` each class's new map without
    each fold's images (the next iteration's references of fold ``f``, :mod:`.class_maps`; ``None`` without folds).
    """

    volumes: torch.Tensor
    class_prior: torch.Tensor
    sigma2: torch.Tensor
    tau2: torch.Tensor | None
    regularisation: torch.Tensor
    data_vs_prior: torch.Tensor
    log_likelihood: float
    class_probability: torch.Tensor
    labels: torch.Tensor
    map_class: torch.Tensor
    map_rotation_index: torch.Tensor
    map_shift_index: torch.Tensor
    map_shift: torch.Tensor
    max_weight: torch.Tensor
    n_significant: torch.Tensor
    fold_volumes: torch.Tensor | None = None


@dataclass
class _Work:
    """One Class3D iteration in its working box ``size`` (RELION's ``current_size``): the maps, priors and
    running M-step sums. full: the particles' box; ratio: ``size / full``; px_work: Å/px of the working
    box (``None`` without a pixel size); k_max: the E-step's shell limit; log_prior: ``(K,)`` or
    ``(N, K)`` ``log π_k``; records: per-batch outputs, concatenated by :func:`_finish`. With leave-fold-out
    references (:mod:`.class_maps`): fold ``(N,)`` each image's fold, parts ``[F][K]`` each fold's class
    accumulators (joined into ``accs`` by :func:`_finish`), fold_slicers ``[F][K]`` (``None``: the class maps)."""

    full: int
    size: int
    ratio: float
    k_max: int
    px_work: float | None
    vols: torch.Tensor
    s2: torch.Tensor
    tau2: torch.Tensor
    slicers: list
    log_prior: torch.Tensor
    accs: list
    noise: NoiseStats
    class_mass: torch.Tensor
    records: dict
    fold: torch.Tensor | None = None
    parts: list | None = None
    fold_slicers: list | None = None


def _work(volumes: torch.Tensor, sigma2: torch.Tensor, class_prior, tau2, k_max, work_size, pad: int,
          pixel_size: float | None, dev, keys: str, fold=None, fold_volumes=None) -> _Work:
    """The working box and empty sums of one iteration (arguments as :func:`class_em_iteration`)."""
    dt = volumes.dtype
    n_cls, full = volumes.shape[0], volumes.shape[-1]
    size = full if work_size is None else int(work_size)
    k_max = full // 2 if k_max is None else int(k_max)
    if size % 2 or size > full or k_max > size // 2:
        raise ValueError(f"work_size must be even, <= {full} and >= 2 k_max = {2 * k_max}; got {size}")
    ratio = size / full
    vols, s2, tau2, slicers = working_maps(volumes, sigma2, tau2, size, pad, dev)
    n_folds = 0 if fold is None else int(fold.max()) + 1
    parts = [[FourierAccumulator(size, pad, dev, dt) for _ in range(n_cls)] for _ in range(n_folds)] or None
    return _Work(full=full, size=size, ratio=ratio, k_max=k_max,
                 px_work=None if pixel_size is None else pixel_size / ratio, vols=vols, s2=s2, tau2=tau2,
                 slicers=slicers, log_prior=_log_priors(class_prior, n_cls, dev, dt),
                 accs=[FourierAccumulator(size, pad, dev, dt) for _ in range(n_cls)], noise=NoiseStats(size, dev, dt),
                 class_mass=torch.zeros(n_cls, device=dev, dtype=torch.float64), records={k: [] for k in keys.split()},
                 fold=fold, parts=parts, fold_slicers=fold_slicers(fold_volumes, size, pad, dev, dt) if parts else None)


def _batch_images(w: _Work, images: torch.Tensor, c_b, shifts: torch.Tensor | None = None):
    """``(Y (B, d, d) complex, C (B, d, d) or None)`` of a batch in the working box (shift undone when given)."""
    dev, dt = w.vols.device, w.vols.dtype
    y = fft2_centered(images.to(device=dev, dtype=dt))
    if w.size != w.full:
        y = fourier_crop_images(y, w.size)
        if isinstance(c_b, torch.Tensor):  # CTF images: the same frequencies, no rescaling
            lo = w.full // 2 - w.size // 2
            c_b = c_b[..., lo:lo + w.size, lo:lo + w.size]
    if shifts is not None:
        y = phase_shift(y, -shifts.to(device=dev, dtype=dt) * w.ratio)
    return y, ctf_images(c_b, images.shape[0], w.size, w.px_work, dev, dt)


def _prior_of(w: _Work, idx: torch.Tensor) -> torch.Tensor:
    return w.log_prior[idx.to(w.log_prior.device)] if w.log_prior.dim() == 2 else w.log_prior


def _searched_batch(w: _Work, idx, y, c, rot, sh, scorers, opts: dict) -> None:
    """E-step and M-step sums of one batch, poses searched (:func:`class_em_iteration`)."""
    dev, n_cls, modal = y.device, len(w.accs), opts["modal"]
    sh_b = sh[idx.to(dev)] if sh.dim() == 3 else sh
    post = class_pose_posterior(y, scorers, rot, sh_b, w.s2, ctf=c, k_max=w.k_max, log_class_prior=_prior_of(w, idx),
                                mass=opts["mass"], max_significant=1 if modal else opts["max_significant"],
                                rotation_chunk=opts["rotation_chunk"])
    if modal:
        keep, w_all = post.rotation_index[:, :1] >= 0, torch.ones_like(post.weight[:, :1])
        cls_i, rot_i, sh_i = post.class_index[:, :1], post.rotation_index[:, :1], post.shift_index[:, :1]
        p_cls = torch.nn.functional.one_hot(cls_i[:, 0], n_cls).to(y.real.dtype)
    else:
        keep, w_all = post.pairs(opts["weight_floor"])
        cls_i, rot_i, sh_i, p_cls = post.class_index, post.rotation_index, post.shift_index, post.class_probability
    w.class_mass += p_cls.double().sum(0)
    bi, ki = keep.nonzero(as_tuple=True)
    pairs = (bi, cls_i[bi, ki], rot_i[bi, ki], sh_i[bi, ki], w_all[bi, ki])
    power = class_sums(y, c, pairs, w_all.sum(1), sh_b, rot, w.slicers,
                       lambda k, used, s1, s2: insert_aggregates(w.accs[k], s1, s2, rot[used]), opts["pair_chunk"])
    w.noise.add(power, pairs[4].sum().double())
    t0 = post.shift_index[:, 0]
    shift = sh_b[t0] if sh_b.dim() == 2 else sh_b[torch.arange(y.shape[0], device=dev), t0]
    for key, v in (("idx", idx), ("lz", post.log_evidence), ("p", p_cls), ("k", post.class_index[:, 0]),
                   ("r", post.rotation_index[:, 0]), ("t", t0), ("ts", shift / w.ratio), ("w", post.weight[:, 0]),
                   ("n", keep.sum(1))):
        w.records[key].append(v)


def _scorers(w: _Work, rot: torch.Tensor, cache_bytes: int) -> list[list]:
    """The E-step's class scorers: per fold with fold maps (else one set), each class's slicer, or its slice values
    inside ``k_max`` (:func:`~cryolens.inference.estep.slice_values`) when all of them fit in ``cache_bytes``."""
    n_pix = used_pixels(w.size, w.k_max, rot.device).numel()
    sets = w.fold_slicers or [w.slicers]
    fits = len(sets) * len(w.slicers) * rot.shape[0] * n_pix * (16 if rot.dtype == torch.float64 else 8) <= cache_bytes
    return [[slice_values(sl, rot, w.size, w.k_max) for sl in sls] if fits else sls for sls in sets]


def _part(timer, name: str):
    """``timer.part(name)`` (a :class:`~cryolens.inference.rank_timing.RankTimer`), or nothing without one."""
    return nullcontext() if timer is None else timer.part(name)


def _finish(w: _Work, sigma2: torch.Tensor, tau2_fudge: float, pad: int, minres_map: int,
            n_images: int, timer=None, with_tau2: bool = True) -> tuple[dict, dict]:
    """The M-step of an iteration, after joining the ranks' sums and records (one process: nothing to
    join): ``(per-image records (n_images, ...) in image order, new model)`` with keys ``volumes, tau2,
    regularisation, data_vs_prior, sigma2, class_prior, log_likelihood``."""
    dev, dt = w.vols.device, w.vols.dtype
    join_folds(w)
    w.noise.all_reduce()
    all_reduce_sum(w.class_mass)
    idx = torch.cat(w.records["idx"]).to(dev)
    cat = {k: gather_rows(idx, torch.cat(v).to(dev), n_images) for k, v in w.records.items() if k != "idx"}
    new_sigma2 = sigma2.to(device=dev, dtype=dt).clone()
    new_sigma2[:w.size // 2 + 1] = w.noise.estimate().to(dt) / w.ratio ** 4
    with _part(timer, "mstep_s"):
        vols, tau2, prior, dvp = class_maps(w.accs, w.vols, w.s2, w.tau2, tau2_fudge, pad, minres_map, w.full,
                                            with_tau2)
        folds = fold_class_maps(w, prior, vols)
    model = {"volumes": vols, "tau2": tau2, "regularisation": prior[0], "data_vs_prior": dvp, "sigma2": new_sigma2,
             "fold_volumes": folds,
             "class_prior": (w.class_mass / max(n_images, 1)).to(torch.float64).cpu(),
             "log_likelihood": float(cat["lz"].double().sum()
                                     + n_images * log_normaliser(w.s2.double(), w.size, w.k_max))}
    return cat, model


def class_em_iteration(data: Particles | torch.Tensor, volumes: torch.Tensor, sigma2: torch.Tensor,
                       rotations: torch.Tensor, shifts: torch.Tensor, class_prior: torch.Tensor | None = None, *,
                       tau2: torch.Tensor | None = None, tau2_fudge: float = 4.0,
                       ctf: CTFParams | torch.Tensor | None = None, pixel_size: float | None = None,
                       k_max: int | None = None, pad: int = 2, batch_size: int | None = None, device=None,
                       mass: float = 0.999, max_significant: int = 1000, weight_floor: float = 1e-6,
                       modal: bool = False, pair_chunk: int | None = None, rotation_chunk: int | None = None,
                       work_size: int | None = None, cache_bytes: int = 1 << 30, minres_map: int = 0,
                       progress=None, timer=None, new_tau2: bool = True, fold: torch.Tensor | None = None,
                       fold_volumes: torch.Tensor | None = None) -> ClassEMResult:
    """One Class3D E-step + M-step over all images (module docstring).

    data: :class:`Particles` (CTF and pixel size used, poses ignored) or real images ``(N, D, D)`` with
    ``ctf`` as in :func:`~cryolens.inference.em.em_iteration`. volumes: ``(K, D, D, D)`` real current
    maps; their dtype is the compute dtype. sigma2: ``(D//2+1,)``. rotations: ``(M, 3, 3)``. shifts:
    ``(T, 2)`` px (or ``(N, T, 2)``). class_prior: ``(K,)`` ``π_k`` (uniform when ``None``), or
    ``(N, K)`` per image (rows summing to 1; zeros allowed, e.g. a one-hot random first assignment).
    tau2: ``(K, D//2+1)`` prior power per class (default: the projector power spectra of ``volumes`` at
    the working box). tau2_fudge: RELION's ``T``. k_max: highest shell of the likelihood. modal: hard
    assignment of the best (class, pose). work_size: even box ``d ≤ D`` (≥ ``2·k_max``) the iteration
    works in — images Fourier-cropped, maps resized (:mod:`cryolens.imaging.spectra`), as RELION's
    ``current_size``; the posterior is unchanged (σ² scaled by ``(d/D)⁴``), the new maps hold no
    frequency above ``d/2`` and σ² is updated up to shell ``d/2`` (default ``D``: no cropping).
    cache_bytes: when the slice values of all classes × rotations inside ``k_max`` fit, they are
    rendered once (:func:`~cryolens.inference.estep.slice_values`) instead of once per batch. progress: an
    optional tqdm bar. minres_map: shells below it get no prior (RELION's ``--minres_map``). batch_size,
    pair_chunk, rotation_chunk: images per batch, pairs per insertion chunk, rotations per scoring chunk —
    ``None`` (default): from the device's free memory (:mod:`~cryolens.inference.memory`; on the CPU at
    most 64, 2048 and :func:`~cryolens.inference.estep.default_rotation_chunk`, the values used before).
    timer: a :class:`~cryolens.inference.rank_timing.RankTimer` the E-step and M-step seconds are counted into.
    new_tau2: compute the new maps' ``τ²`` at the full box (``ClassEMResult.tau2``; ``False``: ``None``, two
    padded full-box transforms per class saved — a caller that hands no ``tau2`` to the next iteration).
    fold, fold_volumes: leave-fold-out class references (:mod:`.class_maps`): ``(N,)`` int each image's fold (``None``:
    none, RELION's), ``(F, K, D, D, D)`` the last ``ClassEMResult.fold_volumes`` (``None``: ``volumes`` for all).
    """
    dev = torch.device(device) if device is not None else volumes.device
    dt = volumes.dtype
    if isinstance(data, Particles):
        pixel_size = data.pixel_size if pixel_size is None else pixel_size
    w = _work(volumes, sigma2, class_prior, tau2, k_max, work_size, pad, pixel_size, dev, "idx lz p k r t ts w n",
              fold, fold_volumes)
    rot = rotations.to(device=dev, dtype=dt)
    sh = shifts.to(device=dev, dtype=dt) * w.ratio
    scorers = _scorers(w, rot, cache_bytes)
    n_poses = len(w.accs) * rot.shape[0] * sh.shape[-2]
    batch_size, pair_chunk = em_sizes(dev, w.size, n_poses, sh.shape[-2], dt, batch_size, pair_chunk)
    opts = {"modal": modal, "mass": mass, "max_significant": max_significant, "weight_floor": weight_floor,
            "rotation_chunk": rotation_chunk, "pair_chunk": pair_chunk}
    with _part(timer, "estep_s"):
        for idx, images, c_b in batches(data, ctf, batch_size, sharded=True):
            y, c = _batch_images(w, images, c_b)
            for wf, sel, f in fold_views(w, idx):
                sc = scorers[f] if w.fold_slicers is not None else scorers[0]  # (f: None without folds)
                _searched_batch(wf, idx[sel], y[sel], None if c is None else c[sel], rot, sh, sc, opts)
            if progress is not None:
                progress.update(images.shape[0])
    cat, model = _finish(w, sigma2, tau2_fudge, pad, minres_map, len(data), timer, new_tau2)
    return ClassEMResult(**model, class_probability=cat["p"], labels=cat["p"].argmax(1), map_class=cat["k"],
                         map_rotation_index=cat["r"], map_shift_index=cat["t"], map_shift=cat["ts"],
                         max_weight=cat["w"], n_significant=cat["n"])


def _fixed_batch(w: _Work, data: Particles, idx, y, c, modal: bool, weight_floor: float) -> None:
    """E-step and M-step sums of one batch at the images' given poses (:func:`class_em_iteration_fixed_poses`);
    ``y``, ``c``: the batch's full-box shift-undone transforms and CTFs (:mod:`.image_cache`), cropped here, then
    each fold's images against its references (:func:`~.class_maps.fold_views`)."""
    if w.size != w.full:  # the working box: the same frequencies (image_cache module docstring)
        lo = w.full // 2 - w.size // 2
        y, c = fourier_crop_images(y, w.size), None if c is None else c[..., lo:lo + w.size, lo:lo + w.size]
    for wf, sel, _ in fold_views(w, idx):
        _fixed_group(wf, data, idx[sel], y[sel], None if c is None else c[sel], modal, weight_floor)


def _fixed_group(w: _Work, data: Particles, idx, y, c, modal: bool, weight_floor: float) -> None:
    """:func:`_fixed_batch` of images in the working box, against ``w``'s slicers, into ``w``'s accumulators."""
    b, n_cls = y.shape[0], len(w.accs)
    rot = data.rotations[idx].to(device=y.device, dtype=y.real.dtype)
    preds = torch.stack([sl(rot) for sl in w.slicers], 1)  # (B, K, d, d)
    r2 = abs2(y[:, None] - (preds if c is None else preds * c[:, None]))  # |Y − C·P_k|², once for ℓ and σ²
    lp = -(shell_weights(w.s2, w.size, w.k_max) * r2).sum((-2, -1)) + _prior_of(w, idx)
    lz = torch.logsumexp(lp, 1)
    p = torch.exp(lp - lz[:, None])
    if modal:
        p = torch.nn.functional.one_hot(p.argmax(1), n_cls).to(y.real.dtype)
    w.class_mass += p.double().sum(0)
    wt = torch.where(p >= weight_floor * p.max(1, keepdim=True).values, p, torch.zeros_like(p))
    wt = wt / wt.sum(1, keepdim=True)
    kept = wt > 0
    if int(kept.sum()) > 0.75 * kept.numel():  # mostly soft: one shared insertion geometry for all classes
        FourierAccumulator.add_shared(w.accs, y, rot, c, wt)
    else:  # mostly one class per image: each class inserts only its own images
        for kc in range(n_cls):
            sel = kept[:, kc].nonzero(as_tuple=True)[0]
            if sel.numel() > 0:
                w.accs[kc].add(y[sel], rot[sel], None if c is None else c[sel], scale=wt[sel, kc])
    w.noise.add((r2 * wt[:, :, None, None]).sum((0, 1)), b)
    for key, v in (("idx", idx), ("lz", lz), ("p", p)):
        w.records[key].append(v)


def class_em_iteration_fixed_poses(data: Particles, volumes: torch.Tensor, sigma2: torch.Tensor,
                                   class_prior: torch.Tensor | None = None, *, tau2: torch.Tensor | None = None,
                                   tau2_fudge: float = 4.0, k_max: int | None = None, pad: int = 2,
                                   batch_size: int | None = None, device=None, modal: bool = False,
                                   minres_map: int = 0,
                                   work_size: int | None = None, weight_floor: float = 1e-6,
                                   progress=None, timer=None, new_tau2: bool = True,
                                   image_cache: ShiftedImageCache | None = None, fold: torch.Tensor | None = None,
                                   fold_volumes: torch.Tensor | None = None) -> ClassEMResult:
    """One Class3D E-step + M-step with every image at its given pose (RELION's ``--skip_align``).

    data: :class:`Particles` with ``rotations (N, 3, 3)`` and ``shifts (N, 2)`` px (``None``: centred) and
    CTFs. Other arguments as :func:`class_em_iteration`. weight_floor: an image is inserted into class
    ``k`` only where ``P(k | Y_i) ≥ weight_floor · max_k P(k | Y_i)`` (renormalised over the kept
    classes). E-step: ``P(k | Y_i) = softmax_k(ℓ_ik + log π_k)`` with ``ℓ_ik``
    :func:`~cryolens.inference.likelihood.gaussian_log_likelihood` at the image's pose (shift undone),
    shells ``≤ k_max``. batch_size ``None``: from the free memory, each image's ``K`` predicted slices
    counted as ``2·K·d²`` poses of :func:`~cryolens.inference.memory.image_bytes`. Returns a
    :class:`ClassEMResult` whose ``map_rotation_index`` is each image's
    own index, ``map_shift`` its given shift and ``max_weight`` its largest class probability. image_cache:
    the images' transforms and CTFs kept from an earlier iteration (:mod:`.image_cache`; filled when empty).
    fold, fold_volumes: as :func:`class_em_iteration`.
    """
    if data.rotations is None:
        raise InputError(f"{data.name}: no poses (rlnAngleRot/Tilt/Psi); classification "
                         "with fixed poses (skip_align) needs them")
    dev = torch.device(device) if device is not None else volumes.device
    dt = volumes.dtype
    w = _work(volumes, sigma2, class_prior, tau2, k_max, work_size, pad, data.pixel_size, dev, "idx lz p", fold,
              fold_volumes)
    batch_size = em_sizes(dev, w.size, 2 * len(w.accs) * w.size ** 2, 1, dt, batch_size, None)[0]
    with _part(timer, "estep_s"):
        for idx, y, c in fixed_pose_batches(data, batch_size, image_cache, dev, dt):
            _fixed_batch(w, data, idx, y, c, modal, weight_floor)
            if progress is not None:
                progress.update(y.shape[0])
    cat, model = _finish(w, sigma2, tau2_fudge, pad, minres_map, len(data), timer, new_tau2)
    probs, n_images = cat["p"], cat["p"].shape[0]
    all_idx = torch.arange(n_images, device=dev)
    shifts = torch.zeros(n_images, 2, device=dev, dtype=dt) if data.shifts is None else data.shifts.to(dev, dt)
    return ClassEMResult(**model, class_probability=probs, labels=probs.argmax(1), map_class=probs.argmax(1),
                         map_rotation_index=all_idx, map_shift_index=torch.zeros_like(all_idx), map_shift=shifts,
                         max_weight=probs.max(1).values, n_significant=(probs > 1e-6).sum(1))

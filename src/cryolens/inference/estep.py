"""The E-step: one streaming posterior over (class, rotation, shift), RELION-style.

For image ``Y_i``, class ``k`` (map ``V_k``) and grid pose ``(R_m, t_j)``, with the Gaussian
log-likelihood ``ℓ_ikmj`` of :mod:`cryolens.inference.likelihood` (per-shell ``σ²``) and log-priors,

    w_ikmj = exp(ℓ_ikmj + log π_k + log π_m + log π_j − log Z_i),   log Z_i = logsumexp_{k,m,j}(…)

(uniform priors by default, so ``log Z_i`` is the log-evidence of the grid, a Riemann sum of
``p(Y_i) = Σ_k π_k ∫ p(Y_i | V_k, R, t) p(R, t)``, up to the likelihood's dropped constant). One class
(``K = 1``) is the pose posterior (:mod:`~cryolens.inference.posterior`); Class3D's ``--skip_align``
scores each image at its one given pose; the adaptive oversampling of auto-refine
(:mod:`~cryolens.inference.oversampling`) produces the same weighted pairs pass by pass.

**Significant weights** (RELION's ``--adaptive_fraction`` / maximum significants,
:func:`significant`): of each image's weights only the smallest set holding a fraction ``mass`` of the
total (the largest weights, in decreasing order), capped at ``max_significant``, is kept. The weights are
the true posterior probabilities, *not* renormalised over the kept set: they sum to ``kept_mass ≤ 1``.
The class posterior ``P(k | Y_i) = Σ_{m,j} w_ikmj`` is exact (a running log-sum-exp per class).

**Memory** (:class:`StreamingTop`): classes × rotation chunks are scored one chunk at a time; per chunk
only a running log-sum-exp per class and the running top ``max_significant`` survive, so no
``B × K × M × T`` table is ever held. Peak working memory, in reals of the images' dtype, is about
``2·B·T·N_p`` (image terms; ``4·B·T·N_p`` while built) ``+ 4·M_c·D² + 5·M_c·N_p`` (one chunk's slices)
``+ 3·B·T·M_c`` (one chunk's table) ``+ 6·B·S`` (the running significant set), ``N_p ≈ π k_max²`` —
e.g. ``B = 64, T = 121, D = 128, k_max = 32, M_c = 256, S = 1000``: ≈ 0.3 GB in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..imaging.ctf import CTFParams
from .likelihood import (SliceFn, as_slicer, ctf_images, log_likelihood_table, prepare_image_terms,
                         slice_values_at, used_pixels)
from .memory import rotation_chunk_for


def translation_grid(max_shift: float, step: float, circular: bool = False, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(T, 2)`` shifts ``(x, y)`` in px: the multiples of ``step`` in ``[−max_shift, max_shift]`` on
    each axis (a square grid of ``(2n + 1)²`` points, ``n = floor(max_shift / step)``), or only those
    within the disc of radius ``max_shift`` when ``circular`` (RELION's offset range). Row
    ``t = iy·(2n + 1) + ix`` for the square grid; ``(0, 0)`` is always included."""
    if step <= 0 or max_shift < 0:
        raise ValueError(f"translation_grid: need step > 0 and max_shift >= 0, got {step}, {max_shift}")
    n = int(math.floor(max_shift / step + 1e-9))
    a = torch.arange(-n, n + 1, device=device, dtype=torch.float64) * step
    yy, xx = torch.meshgrid(a, a, indexing="ij")
    grid = torch.stack([xx, yy], -1).reshape(-1, 2)
    if circular:
        grid = grid[grid.norm(dim=-1) <= max_shift * (1 + 1e-9) + 1e-12]
    return grid.to(dtype)


def default_rotation_chunk(n_images: int, n_shifts: int, size: int, max_table: int = 1 << 24,
                           max_slices: int = 1 << 22) -> int:
    """Rotations per chunk ``M_c`` such that one chunk's ``B × T × M_c`` table has at most ``max_table``
    entries and its ``M_c × D × D`` slices at most ``max_slices`` pixels (64 MB / 32 MB in float32)."""
    return max(1, min(max_table // max(1, n_images * n_shifts), max_slices // (size * size)))


def log_prior(lp: torch.Tensor | None, n: int, b: int, name: str, device, dtype) -> torch.Tensor:
    """``(1 or B, n)`` log-prior of ``n`` hypotheses for ``b`` images; uniform ``−log n`` when ``None``."""
    if lp is None:
        return torch.full((1, n), -math.log(n), device=device, dtype=dtype)
    lp = lp.to(device=device, dtype=dtype)
    if lp.dim() == 1:
        lp = lp[None]
    if lp.shape[-1] != n or lp.shape[0] not in (1, b):
        raise ValueError(f"{name} must be ({n},) or ({b}, {n}), got {tuple(lp.shape)}")
    return lp


def significant(v: torch.Tensor, lse: torch.Tensor, mass: float, cap: int,
                finite_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The significant set of log-weights ``v (B, S)`` sorted descending, with normaliser ``lse (B,)``:
    ``(weights (B, S'), keep (B, S'))``, ``S' = min(S, cap)``, weights ``exp(v − lse)`` where kept and 0
    elsewhere; ``finite_only`` also drops ``v = −∞`` entries (never-scored candidates)."""
    v = v[:, :cap]
    w = torch.exp(v - lse[:, None])
    count = ((torch.cumsum(w, 1) < mass).sum(1) + 1).clamp(max=v.shape[1])
    keep = torch.arange(v.shape[1], device=v.device)[None] < count[:, None]
    if finite_only:
        keep = keep & torch.isfinite(v)
    return torch.where(keep, w, torch.zeros_like(w)), keep


class StreamingTop:
    """Running log-sum-exp per group ``(B, G)`` and the running top ``k`` log-weights of ``B`` images over
    chunks of candidates, each candidate carrying integer labels (e.g. class, rotation, shift index)."""

    def __init__(self, b: int, k: int, n_labels: int, groups: int = 1, device=None, dtype=torch.float32):
        self.k = k
        self.lse = torch.full((b, groups), -math.inf, device=device, dtype=dtype)
        self.values = torch.empty(b, 0, device=device, dtype=dtype)
        self.labels = [torch.empty(b, 0, device=device, dtype=torch.long) for _ in range(n_labels)]

    def add(self, lp: torch.Tensor, decode: Callable[[torch.Tensor], Sequence[torch.Tensor]], group: int = 0) -> None:
        """Score one chunk: ``lp (B, X)`` log-weights; ``decode(i)`` turns column indices ``(B, k')`` into
        the labels of those candidates."""
        self.lse[:, group] = torch.logaddexp(self.lse[:, group], torch.logsumexp(lp, dim=1))
        v, i = lp.topk(min(self.k, lp.shape[1]), dim=1)
        self.values = torch.cat([self.values, v], 1)
        self.labels = [torch.cat([a, d], 1) for a, d in zip(self.labels, decode(i), strict=True)]
        if self.values.shape[1] > self.k:
            self.values, sel = self.values.topk(self.k, dim=1)
            self.labels = [a.gather(1, sel) for a in self.labels]

    def sorted(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(values (B, S), labels)`` in decreasing order of value."""
        order = self.values.argsort(dim=1, descending=True)
        return self.values.gather(1, order), [a.gather(1, order) for a in self.labels]


@dataclass
class PosePosterior:
    """Significant poses of a batch of ``B`` images, sorted by decreasing weight.

    rotation_index, shift_index: ``(B, K)`` int64 indices into the rotation set and the shift grid
    (``−1`` past ``count``). weight: ``(B, K)`` posterior probabilities (0 past ``count``).
    count: ``(B,)`` number of significant poses. log_evidence: ``(B,)`` ``log Z`` (module docstring).
    kept_mass: ``(B,)`` the posterior mass of the significant set. map_log_likelihood: ``(B,)`` the
    log-likelihood (without prior) of the MAP pose.
    """

    rotation_index: torch.Tensor
    shift_index: torch.Tensor
    weight: torch.Tensor
    count: torch.Tensor
    log_evidence: torch.Tensor
    kept_mass: torch.Tensor
    map_log_likelihood: torch.Tensor

    @property
    def map_rotation_index(self) -> torch.Tensor:
        """``(B,)`` rotation index of the maximum a posteriori pose."""
        return self.rotation_index[:, 0]

    @property
    def map_shift_index(self) -> torch.Tensor:
        """``(B,)`` shift index of the maximum a posteriori pose."""
        return self.shift_index[:, 0]

    def map_pose(self, rotations: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The MAP rotation ``(B, 3, 3)`` and shift ``(B, 2)`` px, given the rotation set ``(M, 3, 3)``
        and the shifts ``(T, 2)`` or ``(B, T, 2)`` the posterior was computed on."""
        r = rotations[self.map_rotation_index.to(rotations.device)]
        t_idx = self.map_shift_index.to(shifts.device)
        if shifts.dim() == 3:
            return r, shifts[torch.arange(shifts.shape[0], device=shifts.device), t_idx]
        return r, shifts[t_idx]

    def pairs(self, weight_floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs an M-step inserts: ``(keep (B, S), weights (B, S))``, the significant triples whose
        weight is at least ``weight_floor`` × the image's largest, weights renormalised to 1 per image."""
        keep = (self.rotation_index >= 0) & (self.weight >= weight_floor * self.weight[:, :1])
        w = torch.where(keep, self.weight, torch.zeros_like(self.weight))
        return keep, w / w.sum(1, keepdim=True)

    def dense(self, n_rotations: int, n_shifts: int) -> torch.Tensor:
        """``(B, M, T)`` table of the significant weights (0 elsewhere) — for tests and small grids."""
        b = self.weight.shape[0]
        out = self.weight.new_zeros(b, n_rotations * n_shifts)
        valid = self.rotation_index >= 0
        flat = (self.rotation_index * n_shifts + self.shift_index).clamp_min(0)
        out.scatter_add_(1, flat, torch.where(valid, self.weight, torch.zeros_like(self.weight)))
        return out.reshape(b, n_rotations, n_shifts)


@dataclass
class ClassPosePosterior(PosePosterior):
    """Significant (class, rotation, shift) triples of ``B`` images, sorted by decreasing weight: the
    fields of :class:`PosePosterior` (``rotation_index``, ``shift_index``, ``weight``, ``count``,
    ``log_evidence``, ``kept_mass``, ``map_log_likelihood`` of the MAP triple) and class_index: ``(B, S)``
    int64 (``−1`` past ``count``); class_probability: ``(B, K)`` exact ``P(k | Y_i)`` (all poses).
    """

    class_index: torch.Tensor
    class_probability: torch.Tensor

    def dense(self, n_classes: int, n_rotations: int, n_shifts: int) -> torch.Tensor:
        """``(B, K, M, T)`` table of the significant weights (0 elsewhere) — for tests and small grids."""
        b = self.weight.shape[0]
        out = self.weight.new_zeros(b, n_classes * n_rotations * n_shifts)
        valid = self.rotation_index >= 0
        flat = ((self.class_index * n_rotations + self.rotation_index) * n_shifts + self.shift_index).clamp_min(0)
        out.scatter_add_(1, flat, torch.where(valid, self.weight, torch.zeros_like(self.weight)))
        return out.reshape(b, n_classes, n_rotations, n_shifts)


@dataclass
class WeightedPairs:
    """The E-step's outcome for ``B`` images as the M-step reads it, whichever strategy made it (a grid
    posterior's :meth:`PosePosterior.pairs`, or the passes of adaptive oversampling,
    :mod:`~cryolens.inference.oversampling`): ``P`` weighted (image, rotation, shift) pairs and each
    image's MAP pose.

    image: ``(P,)`` index into the batch; grid_index: ``(P,)`` index into ``so3_grid(level)``; shift:
    ``(P, 2)`` px; weight: ``(P,)`` (summing to 1 per image). map_rotation ``(B, 3, 3)``, map_shift
    ``(B, 2)`` px: the MAP pose; max_weight ``(B,)`` its weight; n_significant ``(B,)`` pairs per image.
    kept_mass: ``(B,)`` the fraction of the last pass's posterior mass the kept pairs held before they were
    renormalised (``None`` where not measured).
    """

    image: torch.Tensor
    grid_index: torch.Tensor
    level: int
    shift: torch.Tensor
    weight: torch.Tensor
    map_rotation: torch.Tensor
    map_shift: torch.Tensor
    max_weight: torch.Tensor
    n_significant: torch.Tensor
    kept_mass: torch.Tensor | None = None


def _score_all(top: StreamingTop, terms, scorers: list, rot: torch.Tensor, priors, chunk: int) -> None:
    """Stream every (class, rotation chunk) table through ``top`` (``priors`` = log π_k, π_m, π_t)."""
    lp_k, lp_r, lp_t = priors
    b, t, m = terms.n_images, lp_t.shape[-1], rot.shape[0]
    for kc, sc in enumerate(scorers):
        for start in range(0, m, chunk):
            stop = min(m, start + chunk)
            mc = stop - start
            if isinstance(sc, torch.Tensor):
                ll = log_likelihood_table(terms, sc[start:stop], on_pixels=True)  # (B, T, M_c)
            else:
                ll = log_likelihood_table(terms, sc(rot[start:stop]))
            lp = (ll + lp_t[:, :, None] + lp_r[:, None, start:stop] + lp_k[:, kc, None, None]).reshape(b, t * mc)
            top.add(lp, lambda i, kc=kc, start=start, mc=mc: (
                torch.full_like(i, kc), start + i % mc, torch.div(i, mc, rounding_mode="floor")), group=kc)


@torch.no_grad()
def class_pose_posterior(images_ft: torch.Tensor, slices: Sequence[SliceFn | torch.Tensor], rotations: torch.Tensor,
                         shifts: torch.Tensor, sigma2: torch.Tensor, *, ctf: torch.Tensor | CTFParams | None = None,
                         pixel_size: float | None = None, k_max: int | None = None,
                         log_class_prior: torch.Tensor | None = None,
                         log_prior_rotation: torch.Tensor | None = None, log_prior_shift: torch.Tensor | None = None,
                         mass: float = 0.999, max_significant: int = 1000,
                         rotation_chunk: int | None = None) -> ClassPosePosterior:
    """Posterior over every (class, rotation, shift) for a batch of images (module docstring).

    images_ft: ``(B, D, D)`` complex centered transforms. slices: one per class, a
    :data:`~cryolens.inference.likelihood.SliceFn`, an oversampled volume transform ``(Dp, Dp, Dp)``,
    or the slice values ``(M, N_p)`` complex of every rotation on the pixels of
    :func:`~cryolens.inference.likelihood.used_pixels` ``(D, k_max)`` (:func:`slice_values`).
    rotations: ``(M, 3, 3)`` image → volume frame. shifts: ``(T, 2)`` or ``(B, T, 2)`` px ``(x, y)``.
    sigma2: ``(D//2+1,)`` noise power per Fourier component. ctf: ``(B, D, D)`` or :class:`CTFParams`
    (with ``pixel_size`` Å/px). log_class_prior: ``(K,)`` or ``(B, K)`` ``log π_k`` (uniform when
    ``None``). log_prior_rotation ``(M,)``/``(B, M)``, log_prior_shift ``(T,)``/``(B, T)``: uniform when
    ``None`` (they need not be normalised). mass, max_significant: the significant set over
    ``(k, m, j)``. rotation_chunk: ``M_c`` (default ``None``: from the free memory,
    :func:`~cryolens.inference.memory.rotation_chunk_for`, on the CPU at most :func:`default_rotation_chunk`).
    """
    b, size = images_ft.shape[0], images_ft.shape[-1]
    dev, rdt = images_ft.device, images_ft.real.dtype
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if max_significant < 1:
        raise ValueError(f"max_significant must be >= 1, got {max_significant}")
    scorers = [s if isinstance(s, torch.Tensor) and s.dim() == 2 else as_slicer(s, size) for s in slices]
    n_cls, rot = len(scorers), rotations.to(dev, rdt)
    m, t = rot.shape[0], shifts.shape[-2]
    terms = prepare_image_terms(images_ft, sigma2, shifts, ctf_images(ctf, b, size, pixel_size, dev, rdt), k_max)
    priors = (log_prior(log_class_prior, n_cls, b, "log_class_prior", dev, rdt),
              log_prior(log_prior_rotation, m, b, "log_prior_rotation", dev, rdt),
              log_prior(log_prior_shift, t, b, "log_prior_shift", dev, rdt))
    chunk = rotation_chunk_for(dev, size, b, t, default_rotation_chunk(b, t, size), images_ft.real.element_size(),
                               rotation_chunk)
    keep_n = min(max_significant, n_cls * m * t)
    top = StreamingTop(b, keep_n, 3, n_cls, dev, rdt)
    _score_all(top, terms, scorers, rot, priors, chunk)
    top_v, (top_k, top_r, top_t) = top.sorted()
    lse = torch.logsumexp(top.lse, dim=1)
    w, keep = significant(top_v, lse, mass, keep_n, finite_only=False)
    lp_k, lp_r, lp_t = priors
    map_prior = (lp_k.expand(b, n_cls).gather(1, top_k[:, :1])[:, 0] + lp_r.expand(b, m).gather(1, top_r[:, :1])[:, 0]
                 + lp_t.expand(b, t).gather(1, top_t[:, :1])[:, 0])
    minus = torch.full_like(top_r, -1)
    return ClassPosePosterior(class_index=torch.where(keep, top_k, minus),
                              rotation_index=torch.where(keep, top_r, minus),
                              shift_index=torch.where(keep, top_t, minus), weight=w, count=keep.sum(1),
                              log_evidence=lse, kept_mass=w.sum(1), class_probability=torch.exp(top.lse - lse[:, None]),
                              map_log_likelihood=top_v[:, 0] - map_prior)


def slice_values(slicer: SliceFn, rotations: torch.Tensor, size: int, k_max: int | None = None,
                 chunk: int = 512) -> torch.Tensor:
    """``(M, N_p)`` complex values of the central slices of every rotation ``(M, 3, 3)`` on the pixels
    of :func:`~cryolens.inference.likelihood.used_pixels` ``(size, k_max)`` — the form
    :func:`class_pose_posterior` accepts to skip re-rendering the slices for every batch."""
    pixels = used_pixels(size, k_max, rotations.device)
    return torch.cat([slice_values_at(slicer, rotations[a:a + chunk], pixels)
                      for a in range(0, rotations.shape[0], chunk)])

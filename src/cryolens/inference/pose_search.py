"""Modal pose search: exhaustive over a grid, and hierarchical (coarse-to-fine) with frequency marching.

The modal E-step (review App. C.4.1) replaces the posterior by its mode ``argmax_{R,t} log p(Y | R, t)``.
Both searches score poses with the Gaussian log-likelihood of :mod:`cryolens.inference.likelihood`
(``σ² ≡ ½`` when no noise spectrum is given, i.e. ``−Σ_{k ≤ k_max} |Y − C·ramp_t·P_R|²``; cryoDRGN2's
score ``−⟨y, ŷ⟩ + ‖ŷ‖²/2`` up to the pose-independent ``‖y‖²`` and a factor 2).

:func:`hierarchical_search` is the branch-and-bound-lite search of cryoDRGN2 (``pose_search.py``:
Zhong et al. 2021) and of cryoSPARC's refinement, on the Hopf-fibration grid of
:mod:`cryolens.imaging.so3_grid`:

1. level ``L₀``: every rotation of ``so3_grid(L₀)`` × a square shift grid of step ``s`` within
   ``±max_shift``, scored with frequencies up to ``k_max[0]``; per image the ``keep`` best
   *rotations* are kept, each with its best shift (as cryoDRGN's ``keep_matrix``);
2. level ``L₀ + l`` (``l = 1 … n_levels``): each kept rotation is split into its 8 children
   (:func:`~cryolens.imaging.so3_grid.children`) and each kept shift ``t`` into the ``T = (2r + 1)²``
   shifts ``t + {−r … r}² · s / 2^l`` (``r = shift_radius``; the shift step halves; shifts outside
   ``±max_shift`` are skipped); the ``8·keep × T`` candidates are scored up to ``k_max[l]`` and again
   the ``keep`` best rotations (each with its best shift) survive — only 1 at the last level.

Kept rotations are distinct, so their children are disjoint and no candidate is scored twice. With
the frequency limit rising across levels (frequency marching) the coarse levels, where the true pose
can be up to ~0.87 × the angular step away from any grid point, compare only the low frequencies that
such an offset leaves correlated. ``r = 1`` covers exactly the cell of the halved step; the default
``r = 2`` leaves a margin for a coarse level whose best shift was off by a full step (measured at
D = 16: with ``r = 1`` some noiseless images kept the right rotation but lost their exact shift).

**A heuristic, not a bound**: a true pose whose coarse ancestor falls out of the top ``keep`` is lost
(a fine point's ancestor can be ~1.5 coarse steps from it, farther than the nearest coarse points).
Measured on noiseless images of Gaussian-blob volumes (D = 16–24; 8 images × 10 volumes per setting)
rendered exactly at grid poses: from base level 2 (15°, cryoDRGN2's 4 608 rotations) with ``keep = 8``
the result equals the exhaustive search over the finest grid for 80 / 80 images at D = 24 (base shift
step 1 px) and at D = 16 with a 0.5 px base shift step, for 77 / 80 at D = 16 with a 1 px step
(80 / 80 with ``keep = 16``); from base level 1 (30°) it misses 2–5 % even with ``keep = 16–24``.
At random off-grid poses (12 images × 10 volumes, CTF, two levels from base level 2, i.e. to 3.75°)
the rotation error is at most 1.36 finest steps with ``keep = 16`` at D = 16 (1.32 at D = 24), but
with ``keep = 8`` 4 % (D = 16) / 1 % (D = 24) of the images end 1.25–2.6 steps away.
Use ``base_level ≥ 2``.

Cost per image: ``grid_size(L₀) · T₀`` scores at the base level (in rotation chunks; the base slices
are rendered once per call and shared by all images), then ``8·keep·T`` scores and ``8·keep`` slices
per level. Memory: the cached base slices, ``grid_size(L₀) · N_p(k_max[0])`` complex values (4 608 ×
~800 = 30 MB in complex64 for ``k_max[0] = 16``); per chunk of ``image_chunk`` images ``B_c``, the
base level as :func:`~cryolens.inference.posterior.pose_posterior` with ``K = keep``;
each refinement level about ``B_c·keep·((4T + 40)·N_p + 24·T)`` reals plus ``4·M_c·D²`` for
rendering ``M_c`` slices at a time (``rotation_chunk``).
No gradients are taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..imaging.ctf import CTFParams
from ..imaging.so3_grid import children, so3_grid
from .likelihood import (ImageTerms, SliceFn, as_slicer, ctf_images, log_likelihood_table, prepare_image_terms,
                         slice_values_at, used_pixels)
from .memory import rotation_chunk_for
from .posterior import default_rotation_chunk, translation_grid


def _sigma2_or_default(sigma2: torch.Tensor | None, size: int, device, dtype) -> torch.Tensor:
    if sigma2 is None:
        return torch.full((size // 2 + 1,), 0.5, device=device, dtype=dtype)
    return sigma2.to(device=device, dtype=dtype)


def _best_rotations(terms: ImageTerms, values: Callable[[int, int], torch.Tensor], m: int, chunk: int,
                    top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` best of ``m`` rotations per image, each with its best shift: ``values(a, b)`` gives
    the slice values ``(b − a, N_p)`` of rotations ``a … b−1`` on ``terms.pixels``. Chunked over
    rotations with a running top-k; returns ``(rotation_index, shift_index, score)``, each ``(B, k)``,
    best first."""
    b = terms.n_images
    dev, rdt = terms.cross.device, terms.cross.dtype
    k = min(int(top_k), m)
    best_v = torch.empty(b, 0, device=dev, dtype=rdt)
    best_r = torch.empty(b, 0, device=dev, dtype=torch.long)
    best_t = torch.empty(b, 0, device=dev, dtype=torch.long)
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        ll = log_likelihood_table(terms, values(start, stop), on_pixels=True)  # (B, T, M_c)
        v_rot, t_rot = ll.max(dim=1)  # best shift of each rotation: (B, M_c)
        v, i = v_rot.topk(min(k, stop - start), dim=1)
        best_v = torch.cat([best_v, v], 1)
        best_r = torch.cat([best_r, start + i], 1)
        best_t = torch.cat([best_t, t_rot.gather(1, i)], 1)
        if best_v.shape[1] > k:
            v, sel = best_v.topk(k, dim=1)
            best_v, best_r, best_t = v, best_r.gather(1, sel), best_t.gather(1, sel)
    order = best_v.argsort(dim=1, descending=True)
    return best_r.gather(1, order), best_t.gather(1, order), best_v.gather(1, order)


@torch.no_grad()
def grid_search(images_ft: torch.Tensor, slices: SliceFn | torch.Tensor, rotations: torch.Tensor,
                shifts: torch.Tensor, *, sigma2: torch.Tensor | None = None,
                ctf: torch.Tensor | CTFParams | None = None, pixel_size: float | None = None,
                k_max: int | None = None, top_k: int = 1,
                rotation_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exhaustive search over ``rotations (M, 3, 3)`` × ``shifts`` (``(T, 2)``, or ``(B, T, 2)`` per
    image) px for each image.

    Arguments as :func:`~cryolens.inference.posterior.pose_posterior` (``sigma2`` optional here).
    Returns ``(rotation_index, shift_index, score)``, each ``(B, top_k)``: the ``top_k`` best distinct
    rotations, each with its best shift, best first; score is the log-likelihood.
    Memory: as ``pose_posterior`` with ``K = top_k``.
    """
    b, size = images_ft.shape[0], images_ft.shape[-1]
    dev, rdt = images_ft.device, images_ft.real.dtype
    rot = rotations.to(dev, rdt)
    slicer = as_slicer(slices, size)
    c = ctf_images(ctf, b, size, pixel_size, dev, rdt)
    terms = prepare_image_terms(images_ft, _sigma2_or_default(sigma2, size, dev, rdt), shifts, c, k_max)
    chunk = rotation_chunk_for(dev, size, b, shifts.shape[-2], default_rotation_chunk(b, shifts.shape[-2], size),
                               images_ft.real.element_size(), rotation_chunk)
    return _best_rotations(terms, lambda a, z: slice_values_at(slicer, rot[a:z], terms.pixels), rot.shape[0], chunk,
                           top_k)


@dataclass
class PoseSearchResult:
    """Point estimates for ``B`` images.

    rotations: ``(B, 3, 3)`` image → volume frame. shifts: ``(B, 2)`` px ``(x, y)``, particle centre
    relative to the image centre. scores: ``(B,)`` log-likelihood at ``k_max`` (likelihood module;
    with ``σ² ≡ ½`` when none was given). grid_index: ``(B,)`` int64 index of ``rotations`` in
    ``so3_grid(level)``. shift_step: the final shift step (px).
    """

    rotations: torch.Tensor
    shifts: torch.Tensor
    scores: torch.Tensor
    grid_index: torch.Tensor
    level: int
    k_max: int
    shift_step: float


def frequency_schedule(size: int, n_levels: int, k_start: int | None = None, k_end: int | None = None) -> list[int]:
    """Frequency marching: ``n_levels + 1`` shell limits rising linearly from ``k_start``
    (default ``max(4, D//8)``) to ``k_end`` (default ``D//2``), one per search level."""
    k_end = size // 2 if k_end is None else int(k_end)
    k_start = min(max(4, size // 8), k_end) if k_start is None else int(k_start)
    if n_levels == 0:
        return [k_end]
    return [int(round(k_start + (k_end - k_start) * level / n_levels)) for level in range(n_levels + 1)]


def _restricted_slices(pixels: torch.Tensor, slicer: SliceFn, rots: torch.Tensor, chunk: int) -> torch.Tensor:
    """``(M, N_p)`` slice values on the flat ``pixels``, ``chunk`` rotations at a time."""
    return torch.cat([slice_values_at(slicer, rots[s:s + chunk], pixels) for s in range(0, rots.shape[0], chunk)])


REFINE_CPU_BYTES = 8 << 20  # CPU: the shifted candidate images of one _refine call stay under this


def _refine_images_per_call(b: int, k: int, radius: int, k_max: int, device: torch.device) -> int:
    """Images per :func:`_refine` call. On a CPU, few enough that its largest temporary, the
    ``(images · K, T, N_p)`` complex64 shifted candidates, stays under ``REFINE_CPU_BYTES``: glibc serves
    blocks above its mmap threshold (at most 32 MiB) with fresh pages, and faulting those in cost 40 % of a
    search's time (``benchmarks/RESULTS.md``); smaller blocks are reused from the heap. Same results (each
    image is refined on its own). On a GPU, all ``b`` at once."""
    if torch.device(device).type != "cpu":
        return b
    per_image = k * (2 * radius + 1) ** 2 * math.pi * max(k_max, 1) ** 2 * 8
    return max(1, min(b, int(REFINE_CPU_BYTES // per_image)))


def _refine(images_ft, ctf, slicer, sigma2, rot_idx, shifts, level, step, radius, max_shift, k_max, keep, chunk):
    """One refinement level: children of ``rot_idx (B, K)`` at ``level − 1`` × the ``(2·radius + 1)²``
    shifts of ``step`` around ``shifts (B, K, 2)``; returns the ``keep`` best (index at ``level``,
    shift, score)."""
    b, k = rot_idx.shape
    dev, rdt = images_ft.device, images_ft.real.dtype
    child = children(level - 1, rot_idx)  # (B, K, 8)
    rots = so3_grid(level, dtype=rdt, indices=child.reshape(-1))  # (B·K·8, 3, 3)
    offsets = translation_grid(radius * step, step, device=dev, dtype=rdt)  # (T, 2)
    n_t = offsets.shape[0]
    cand = shifts[:, :, None, :] + offsets  # (B, K, T, 2)
    valid = (cand.abs() <= max_shift + 1e-6 * step).all(-1)  # (B, K, T)
    y = images_ft.repeat_interleave(k, dim=0)
    c = None if ctf is None else ctf.repeat_interleave(k, dim=0)
    terms = prepare_image_terms(y, sigma2, cand.reshape(b * k, n_t, 2), c, k_max)
    vals = _restricted_slices(terms.pixels, slicer, rots, chunk).reshape(b * k, 8, -1)
    ll = log_likelihood_table(terms, vals, on_pixels=True)  # (B·K, T, 8)
    ll = ll.masked_fill(~valid.reshape(b * k, n_t, 1), -math.inf)
    v_rot, t_rot = ll.max(dim=1)  # (B·K, 8)
    v, i = v_rot.reshape(b, k * 8).topk(min(keep, k * 8), dim=1)
    j, ch = torch.div(i, 8, rounding_mode="floor"), i % 8
    new_idx = child.gather(1, j[..., None].expand(-1, -1, 8)).gather(2, ch[..., None])[..., 0]
    best_t = t_rot.reshape(b, k, 8).gather(1, j[..., None].expand(-1, -1, 8)).gather(2, ch[..., None])[..., 0]
    cand_j = cand.gather(1, j[..., None, None].expand(-1, -1, n_t, 2))  # (B, keep, T, 2)
    new_shift = cand_j.gather(2, best_t[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    return new_idx, new_shift, v


@torch.no_grad()
def hierarchical_search(images_ft: torch.Tensor, slices: SliceFn | torch.Tensor, *,
                        sigma2: torch.Tensor | None = None, ctf: torch.Tensor | CTFParams | None = None,
                        pixel_size: float | None = None, base_level: int = 2, n_levels: int = 4,
                        max_shift: float = 5.0, shift_step: float = 1.0, shift_radius: int = 2, keep: int = 8,
                        k_max: Sequence[int] | None = None, image_chunk: int = 64,
                        rotation_chunk: int | None = None) -> PoseSearchResult:
    """Coarse-to-fine modal pose search with frequency marching (module docstring).

    images_ft: ``(B, D, D)`` complex, centered. slices: a
    :data:`~cryolens.inference.likelihood.SliceFn` ``(M, 3, 3) → (M, D, D)`` complex (any method that
    renders central slices: voxel grid, neural field, ...) or an oversampled volume transform
    ``(Dp, Dp, Dp)``. sigma2: ``(D//2+1,)`` noise power (default white). ctf: ``(B, D, D)`` real or
    :class:`CTFParams` with ``pixel_size`` (Å/px).
    base_level: SO(3) grid level searched exhaustively (72·8^L rotations; cryoDRGN2: 2, 4 608).
    n_levels: refinement levels; the result lies on ``so3_grid(base_level + n_levels)``.
    max_shift, shift_step: base shift grid ``±max_shift`` px in steps of ``shift_step`` px; the step
    halves at each level (final ``shift_step / 2^n_levels``); shift_radius: each kept shift is
    refined over ``(2·shift_radius + 1)²`` shifts of the new step around it. keep: rotations kept per image
    between levels. k_max: ``n_levels + 1`` shell limits (default :func:`frequency_schedule`).
    image_chunk: images processed together; rotation_chunk: slices rendered together (``None``: from
    the free memory, :func:`~cryolens.inference.memory.rotation_chunk_for`); both bound memory.
    """
    b, size = images_ft.shape[0], images_ft.shape[-1]
    dev, rdt = images_ft.device, images_ft.real.dtype
    ks = frequency_schedule(size, n_levels) if k_max is None else [int(k) for k in k_max]
    if len(ks) != n_levels + 1:
        raise ValueError(f"k_max needs n_levels + 1 = {n_levels + 1} values, got {len(ks)}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    slicer = as_slicer(slices, size)
    s2 = _sigma2_or_default(sigma2, size, dev, rdt)
    c_all = ctf_images(ctf, b, size, pixel_size, dev, rdt)
    base_rot = so3_grid(base_level, device=dev, dtype=rdt)
    base_shifts = translation_grid(max_shift, shift_step, device=dev, dtype=rdt)
    slice_chunk = default_rotation_chunk(1, 1, size) if rotation_chunk is None else int(rotation_chunk)

    # the base level's slices on the pixels inside k_max[0], rendered once for all images
    base_vals = _restricted_slices(used_pixels(size, ks[0], dev), slicer, base_rot, slice_chunk)  # (M₀, N_p)

    out_idx, out_shift, out_score = [], [], []
    for s in range(0, b, image_chunk):
        y = images_ft[s:s + image_chunk]
        c = None if c_all is None else c_all[s:s + image_chunk]
        idx, shift, score = _search_chunk(y, c, slicer, s2, base_vals, base_shifts, ks, base_level, n_levels,
                                          max_shift, shift_step, shift_radius, keep, rotation_chunk, slice_chunk)
        out_idx.append(idx[:, 0])
        out_shift.append(shift[:, 0])
        out_score.append(score[:, 0])
    final = base_level + n_levels
    idx = torch.cat(out_idx)
    return PoseSearchResult(rotations=so3_grid(final, dtype=rdt, indices=idx), shifts=torch.cat(out_shift),
                            scores=torch.cat(out_score), grid_index=idx, level=final, k_max=ks[-1],
                            shift_step=shift_step / 2**n_levels)


def _search_chunk(y, c, slicer, s2, base_vals, base_shifts, ks, base_level, n_levels, max_shift, shift_step,
                  shift_radius, keep, rotation_chunk, slice_chunk):
    """:func:`hierarchical_search` of one chunk of images ``y (B_c, D, D)`` (CTFs ``c``): the exhaustive
    base level against ``base_vals``, then the ``n_levels`` refinements; ``(indices, shifts, scores)``
    of the kept poses, best first."""
    size, dev = y.shape[-1], y.device
    n_keep = keep if n_levels > 0 else 1
    terms = prepare_image_terms(y, s2, base_shifts, c, ks[0])
    b, t = y.shape[0], base_shifts.shape[0]
    chunk = rotation_chunk_for(dev, size, b, t, default_rotation_chunk(b, t, size), y.real.element_size(),
                               rotation_chunk)
    idx, t_idx, score = _best_rotations(terms, lambda a, z, v=base_vals: v[a:z], base_vals.shape[0], chunk, n_keep)
    shift = base_shifts[t_idx]  # (B_c, K, 2)
    for level in range(1, n_levels + 1):
        n_keep = keep if level < n_levels else 1
        sub = _refine_images_per_call(y.shape[0], idx.shape[1], shift_radius, ks[level], dev)
        parts = [_refine(y[u:u + sub], None if c is None else c[u:u + sub], slicer, s2, idx[u:u + sub],
                         shift[u:u + sub], base_level + level, shift_step / 2**level, shift_radius, max_shift,
                         ks[level], n_keep, slice_chunk) for u in range(0, y.shape[0], sub)]
        idx, shift, score = (torch.cat(z) for z in zip(*parts))
    return idx, shift, score

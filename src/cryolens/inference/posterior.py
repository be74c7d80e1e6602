"""The E-step: the posterior over a pose grid (rotations × translations), RELION-style.

For each image ``Y_i`` and every pose ``(R_m, t_j)`` of a grid, the Gaussian log-likelihood of
:mod:`cryolens.inference.likelihood`, ``ℓ_imj = log p(Y_i | R_m, t_j)`` (up to a pose-independent
constant), plus a log-prior gives the posterior weights

    w_imj = exp(ℓ_imj + log π_m + log π_j − log Z_i),     log Z_i = logsumexp_{m,j}(ℓ_imj + log π_m + log π_j)

(uniform priors by default: ``π_m = 1/M``, ``π_j = 1/T``, so ``log Z_i`` is the log-evidence of the
grid, a Riemann sum of ``p(Y_i) = ∫ p(Y_i | R, t) p(R, t)``, up to the likelihood's dropped constant).

**Significant weights** (RELION's ``--adaptive_fraction``/``maximum significants``): of each image's
``M·T`` weights only the smallest set holding a fraction ``mass`` of the total (the largest weights,
in decreasing order), capped at ``max_significant`` poses, is returned. The weights are the true
posterior probabilities, *not* renormalised over the kept set: they sum to ``kept_mass ≤ 1``
(``≥ mass`` unless the cap bit first).

**Memory.** Rotations are processed in chunks of ``M_c``; per chunk only a running log-sum-exp and
the running top ``K = max_significant`` poses survive, so no ``B × M × T`` table is ever held. Peak
working memory, in reals of the images' dtype (4 bytes for float32), is about

    2·B·T·N_p  (image terms; 4·B·T·N_p while they are built)
    + 4·M_c·D² + 5·M_c·N_p  (one chunk's slices and their restriction to the used pixels)
    + 3·B·T·M_c  (one chunk's table)  +  6·B·K  (the running significant set)

with ``N_p ≈ π k_max²`` the pixels inside ``k_max`` — e.g. ``B = 64, T = 121, D = 128, k_max = 32,
M_c = 256, K = 1000``: ≈ 0.3 GB in float32 (0.5 GB while the image terms are built). Choose ``B``
(the caller's batch) and ``rotation_chunk`` to fit. No gradients are taken (an E-step treats the
volume as fixed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..imaging.ctf import CTFParams
from ..imaging.so3_grid import so3_grid
from .likelihood import SliceFn, as_slicer, ctf_images, log_likelihood_table, prepare_image_terms


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

    def dense(self, n_rotations: int, n_shifts: int) -> torch.Tensor:
        """``(B, M, T)`` table of the significant weights (0 elsewhere) — for tests and small grids."""
        b = self.weight.shape[0]
        out = self.weight.new_zeros(b, n_rotations * n_shifts)
        valid = self.rotation_index >= 0
        flat = (self.rotation_index * n_shifts + self.shift_index).clamp_min(0)
        out.scatter_add_(1, flat, torch.where(valid, self.weight, torch.zeros_like(self.weight)))
        return out.reshape(b, n_rotations, n_shifts)


def _log_prior(lp: torch.Tensor | None, n: int, b: int, name: str, device, dtype) -> torch.Tensor:
    """``(1 or B, n)`` log-prior; uniform ``−log n`` by default."""
    if lp is None:
        return torch.full((1, n), -math.log(n), device=device, dtype=dtype)
    lp = lp.to(device=device, dtype=dtype)
    if lp.dim() == 1:
        lp = lp[None]
    if lp.shape[-1] != n or lp.shape[0] not in (1, b):
        raise ValueError(f"{name} must be ({n},) or ({b}, {n}), got {tuple(lp.shape)}")
    return lp


def default_rotation_chunk(n_images: int, n_shifts: int, size: int, max_table: int = 1 << 24,
                           max_slices: int = 1 << 22) -> int:
    """Rotations per chunk ``M_c`` such that one chunk's ``B × T × M_c`` table has at most ``max_table``
    entries and its ``M_c × D × D`` slices at most ``max_slices`` pixels (64 MB / 32 MB in float32)."""
    return max(1, min(max_table // max(1, n_images * n_shifts), max_slices // (size * size)))


@torch.no_grad()
def pose_posterior(images_ft: torch.Tensor, slices: SliceFn | torch.Tensor, rotations: torch.Tensor | int,
                   shifts: torch.Tensor, sigma2: torch.Tensor, *, ctf: torch.Tensor | CTFParams | None = None,
                   pixel_size: float | None = None, k_max: int | None = None,
                   log_prior_rotation: torch.Tensor | None = None, log_prior_shift: torch.Tensor | None = None,
                   mass: float = 0.999, max_significant: int = 1000,
                   rotation_chunk: int | None = None) -> PosePosterior:
    """Posterior over every (rotation, shift) of a grid for a batch of images, with significant-weight
    pruning (module docstring).

    images_ft: ``(B, D, D)`` complex, centered transforms of the images.
    slices: :data:`~cryolens.inference.likelihood.SliceFn` ``(M_c, 3, 3) → (M_c, D, D)``, or an
    oversampled volume transform ``(Dp, Dp, Dp)`` (:func:`~cryolens.imaging.slice.prepare_volume_ft`).
    rotations: ``(M, 3, 3)`` image → volume frame, or an SO(3) grid level (:func:`so3_grid`).
    shifts: ``(T, 2)`` px ``(x, y)`` (e.g. :func:`translation_grid`), particle centre relative to the
    image centre — or ``(B, T, 2)``, a grid per image (e.g. centred on each image's previous shift,
    as RELION does). sigma2: ``(D//2+1,)`` noise power per Fourier component (likelihood module).
    ctf: ``(B, D, D)`` real CTF images or :class:`CTFParams` (then ``pixel_size`` Å/px); ``None``: no CTF.
    k_max: highest shell used (default ``D//2``).
    log_prior_rotation: ``(M,)`` or ``(B, M)``; log_prior_shift: ``(T,)`` or ``(B, T)`` — log-priors,
    uniform when ``None`` (they need not be normalised; the evidence then shifts by their normaliser).
    mass, max_significant: the significant set (module docstring). rotation_chunk: ``M_c`` (default:
    :func:`default_rotation_chunk`).
    """
    b, size = images_ft.shape[0], images_ft.shape[-1]
    dev, rdt = images_ft.device, images_ft.real.dtype
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if max_significant < 1:
        raise ValueError(f"max_significant must be >= 1, got {max_significant}")
    rot = so3_grid(rotations, device=dev, dtype=rdt) if isinstance(rotations, int) else rotations.to(dev, rdt)
    m, t = rot.shape[0], shifts.shape[-2]
    slicer = as_slicer(slices, size)
    c = ctf_images(ctf, b, size, pixel_size, dev, rdt)
    terms = prepare_image_terms(images_ft, sigma2, shifts, c, k_max)
    lp_r = _log_prior(log_prior_rotation, m, b, "log_prior_rotation", dev, rdt)
    lp_t = _log_prior(log_prior_shift, t, b, "log_prior_shift", dev, rdt)
    chunk = default_rotation_chunk(b, t, size) if rotation_chunk is None else int(rotation_chunk)
    k = min(max_significant, m * t)

    lse = torch.full((b,), -math.inf, device=dev, dtype=rdt)
    top_v = torch.empty(b, 0, device=dev, dtype=rdt)
    top_r = torch.empty(b, 0, device=dev, dtype=torch.long)
    top_t = torch.empty(b, 0, device=dev, dtype=torch.long)
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        mc = stop - start
        ll = log_likelihood_table(terms, slicer(rot[start:stop]))  # (B, T, M_c)
        lp = (ll + lp_t[:, :, None] + lp_r[:, None, start:stop]).reshape(b, t * mc)
        lse = torch.logaddexp(lse, torch.logsumexp(lp, dim=1))
        v, i = lp.topk(min(k, t * mc), dim=1)
        top_v = torch.cat([top_v, v], 1)
        top_r = torch.cat([top_r, start + i % mc], 1)
        top_t = torch.cat([top_t, torch.div(i, mc, rounding_mode="floor")], 1)
        if top_v.shape[1] > k:
            v, sel = top_v.topk(k, dim=1)
            top_v, top_r, top_t = v, top_r.gather(1, sel), top_t.gather(1, sel)
    order = top_v.argsort(dim=1, descending=True)
    top_v, top_r, top_t = top_v.gather(1, order), top_r.gather(1, order), top_t.gather(1, order)

    w = torch.exp(top_v - lse[:, None])
    cum = torch.cumsum(w, dim=1)
    count = ((cum < mass).sum(1) + 1).clamp(max=k)
    keep = torch.arange(k, device=dev)[None] < count[:, None]
    w = torch.where(keep, w, torch.zeros_like(w))
    map_prior = lp_r.expand(b, m).gather(1, top_r[:, :1])[:, 0] + lp_t.expand(b, t).gather(1, top_t[:, :1])[:, 0]
    map_ll = top_v[:, 0] - map_prior
    return PosePosterior(rotation_index=torch.where(keep, top_r, torch.full_like(top_r, -1)),
                         shift_index=torch.where(keep, top_t, torch.full_like(top_t, -1)),
                         weight=w, count=count, log_evidence=lse, kept_mass=w.sum(1), map_log_likelihood=map_ll)

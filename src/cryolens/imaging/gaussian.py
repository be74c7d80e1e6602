"""Gaussian mixtures: voxelised volumes and their exact projections.

A mixture ``V(r) = Σ_j a_j exp(−|r − μ_j|² / (2 σ_j²))`` with centres ``μ_j`` in voxels
``(x, y, z)`` relative to the box centre. Its projection under ``R`` (image → volume frame)
is ``Σ_j a_j √(2π) σ_j exp(−|p − c_j|² / (2 σ_j²))`` with ``c_j`` the first two components of
``Rᵀ μ_j``; its 2D continuous Fourier transform is
``Σ_j a_j (2π)^{3/2} σ_j³ exp(−2π² σ_j² |k|²) exp(−2πi k·c_j)`` (k in cycles/px).
These closed forms are the independent references for the voxel projectors.

The ``mixture_*`` functions are the batched, separable versions used by the Gaussian-mixture volume
(:mod:`cryolens.volumes.gaussian_mixture`): one mixture per row (``B`` conformations), maps and
projections sampled axis by axis (a ``(D, D, D)`` map costs ``D³·M`` multiply-adds with no ``(D³, M)``
intermediate), their central slices on the image grid (separable too), and the 3D transform at any
frequencies.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .grids import coord_grid_2d, coord_grid_3d, freq_grid_2d


def gaussian_volume(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor, size: int,
                    chunk: int = 64) -> torch.Tensor:
    """``(D, D, D)`` point samples of the mixture. centers ``(M, 3)`` voxels, sigmas and
    amplitudes ``(M,)`` (voxels, arbitrary density units)."""
    r = coord_grid_3d(size, device=centers.device, dtype=centers.dtype)
    out = torch.zeros(r.shape[:-1], device=centers.device, dtype=centers.dtype)
    for s in range(0, centers.shape[0], chunk):
        c, sg, a = centers[s:s + chunk], sigmas[s:s + chunk], amplitudes[s:s + chunk]
        d2 = ((r[..., None, :] - c) ** 2).sum(-1)
        out += (a * torch.exp(-d2 / (2 * sg**2))).sum(-1)
    return out


def _image_centres(centers: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    # image-frame position of each centre: Rᵀ μ, keep (x, y)
    return torch.einsum("nji,mj->nmi", rotations.to(centers.dtype), centers)[..., :2]


def gaussian_projection(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
                        rotations: torch.Tensor, size: int) -> torch.Tensor:
    """Exact projections ``(N, D, D)`` (point samples) of the mixture under ``rotations (N, 3, 3)``."""
    p = coord_grid_2d(size, device=centers.device, dtype=centers.dtype)  # (D, D, 2)
    c = _image_centres(centers, rotations)  # (N, M, 2)
    d2 = ((p[None, :, :, None, :] - c[:, None, None]) ** 2).sum(-1)  # (N, D, D, M)
    amp = amplitudes * math.sqrt(2 * math.pi) * sigmas
    return (amp * torch.exp(-d2 / (2 * sigmas**2))).sum(-1)


def gaussian_projection_ft(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
                           rotations: torch.Tensor, size: int) -> torch.Tensor:
    """Continuous 2D Fourier transform ``(N, D, D)`` complex of the projections, sampled on the
    centered grid ``(i − D//2)/D`` cycles/px (equal to the centered DFT of well-sampled images)."""
    k = freq_grid_2d(size, device=centers.device, dtype=centers.dtype)  # (D, D, 2)
    c = _image_centres(centers, rotations)  # (N, M, 2)
    k2 = (k**2).sum(-1)[..., None]  # (D, D, 1)
    env = amplitudes * (2 * math.pi) ** 1.5 * sigmas**3 * torch.exp(-2 * math.pi**2 * sigmas**2 * k2)
    phase = -2 * math.pi * torch.einsum("yxc,nmc->nyxm", k, c)
    return (env * torch.polar(torch.ones_like(phase), phase)).sum(-1)


# Batched mixtures (one mixture per row): separable sampling, so a map costs D³·M and an image D²·M
# multiply-adds without a (…, D, D, M) intermediate. Centres (B, M, 3) voxels, sigmas and amplitudes
# (B, M); a batch of 1 broadcasts against the rotations or frequencies.
_CHUNK = 1 << 22  # entries of one chunk's intermediate: bounds the working memory


def _profiles(centers: torch.Tensor, sigmas: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, M, C, D)`` 1D Gaussians ``exp(−(i − D//2 − c)² / 2σ²)`` along each of the ``C`` axes."""
    x = torch.arange(size, device=centers.device, dtype=centers.dtype) - size // 2
    s = sigmas[..., None, None]
    return torch.exp(-(x - centers[..., None]) ** 2 / (2 * s * s))


def _chunked_sum(fn, shared: tuple, per_gaussian: tuple, step: int) -> torch.Tensor:
    """``Σ_chunks fn(*shared, *chunk)`` over chunks of ``step`` Gaussians (dim 1 of ``per_gaussian``). With
    several chunks under autograd each is checkpointed (recomputed in the backward pass), so the memory is
    one chunk's whatever the number of Gaussians, for about 1.5× the time."""
    m = per_gaussian[0].shape[1]
    grad = m > step and torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in shared + per_gaussian)
    out = 0
    for s in range(0, m, step):
        part = shared + tuple(t[:, s:s + step] for t in per_gaussian)
        out = out + (checkpoint(fn, *part, use_reentrant=False) if grad else fn(*part))
    return out


def _volume_chunk(size: int, centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor) -> torch.Tensor:
    """``(B, D², D)`` sum of one chunk's Gaussians: ``Σ_m a g_z g_y · g_x``."""
    g = _profiles(centers, sigmas, size)  # (B, m, 3, D)
    zy = (amplitudes[:, :, None, None] * g[:, :, 2, :, None] * g[:, :, 1, None, :]).flatten(2)
    return torch.bmm(zy.transpose(1, 2), g[:, :, 0])


def mixture_volumes(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
                    size: int) -> torch.Tensor:
    """``(B, D, D, D)`` ``[z, y, x]`` point samples of ``B`` mixtures (centres ``(B, M, 3)`` voxels
    ``(x, y, z)`` from the centre ``D//2``, sigmas ``(B, M)`` voxels, amplitudes ``(B, M)`` peak values):
    the same values as :func:`gaussian_volume`, one mixture per row. Differentiable; chunked over the
    Gaussians (``B·m·D² ≤ 4M`` entries, checkpointed under autograd: :func:`_chunked_sum`)."""
    b, d = centers.shape[0], int(size)
    if centers.shape[1] == 0:
        return centers.new_zeros(b, d, d, d)
    step = max(1, _CHUNK // (b * d * d))
    return _chunked_sum(_volume_chunk, (d,), (centers, sigmas, amplitudes), step).reshape(b, d, d, d)


def _projection_step(b: int, m: int, d: int) -> int:
    """Gaussians per chunk of an image-space mixture sum over ``(B, m, 2, D)`` profiles: all ``m`` under autograd
    (training batches are small, and a checkpointed chunk would cost its recomputation), else ``B·m·2·D ≤ 4M``
    entries per chunk, so that a large batch of a per-atom model (tens of thousands of Gaussians) stays bounded."""
    return m if torch.is_grad_enabled() else max(1, _CHUNK // (b * 2 * d))


def _projection_chunk(size: int, c: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``(B, D, D)`` projection of one chunk of image-frame Gaussians (:func:`mixture_projections`)."""
    g = _profiles(c, s, size)  # (B, m, 2, D)
    w = a * math.sqrt(2 * math.pi) * s  # ∫ exp(−z²/2σ²) dz
    return torch.bmm((w[..., None] * g[:, :, 1]).transpose(1, 2), g[:, :, 0])


def mixture_projections(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
                        rotations: torch.Tensor, size: int) -> torch.Tensor:
    """Exact projections ``(B, D, D)`` (point samples of the line integrals, voxel steps) of mixture ``b``
    under ``rotations[b] (3, 3)`` (image → volume frame): :func:`gaussian_projection` per row, with the
    centres ``(B or 1, M, 3)`` of each row's own mixture. Without autograd, chunked over the Gaussians
    (:func:`_projection_step`)."""
    c, s, a = _in_image(centers, sigmas, amplitudes, rotations)
    step = _projection_step(c.shape[0], c.shape[1], size)
    return _chunked_sum(_projection_chunk, (size,), (c, s, a), step)


def _in_image(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
              rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image-frame centres ``(B, M, 2)`` (the ``(x, y)`` of ``Rᵀ μ``), sigmas and amplitudes ``(B, M)``."""
    rot = rotations.to(centers.dtype)
    c = torch.einsum("nji,nmj->nmi", rot, centers.expand(rot.shape[0], -1, -1))[..., :2]
    return c, sigmas.expand(c.shape[:2]), amplitudes.expand(c.shape[:2])


def mixture_projection_ft(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
                          rotations: torch.Tensor, size: int) -> torch.Tensor:
    """Continuous 2D transforms ``(B, D, D)`` complex of :func:`mixture_projections`, sampled on the centred
    grid ``(i − D//2)/D`` cycles/px: the central slices ``R · [kx, ky, 0]`` of :func:`mixture_fourier`
    (Fourier slice theorem), :func:`gaussian_projection_ft` per row. Separable in ``kx`` and ``ky`` (the
    envelope ``exp(−2π²σ²|k|²)`` and the phase both factor), so a batch costs ``O(B·M·D)`` exponentials and
    one ``(D × M)·(M × D)`` complex product per image instead of ``O(B·D²·M)``. Without autograd, chunked over
    the Gaussians (:func:`_projection_step`)."""
    c, s, a = _in_image(centers, sigmas, amplitudes, rotations)
    step = _projection_step(c.shape[0], c.shape[1], size)
    return _chunked_sum(_projection_ft_chunk, (size,), (c, s, a), step)


def _projection_ft_chunk(size: int, c: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``(B, D, D)`` complex transform of one chunk of image-frame Gaussians (:func:`mixture_projection_ft`)."""
    k = (torch.arange(size, device=c.device, dtype=c.dtype) - size // 2) / size
    sg = s[..., None, None]
    prof = torch.polar(torch.exp(-2 * math.pi ** 2 * sg * sg * k * k).expand(*c.shape, size),
                       -2 * math.pi * c[..., None] * k)  # (B, m, 2, D)
    w = (a * (2 * math.pi) ** 1.5 * s ** 3).to(prof.dtype)
    return torch.bmm((w[..., None] * prof[:, :, 1]).transpose(1, 2), prof[:, :, 0])


def _fourier_chunk(coords: torch.Tensor, k2: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor,
                   amplitudes: torch.Tensor) -> torch.Tensor:
    """``(2, B, K)`` real and imaginary parts of :func:`mixture_fourier` for one chunk of Gaussians."""
    sg, a = sigmas[:, None], amplitudes[:, None]
    env = a * (2 * math.pi) ** 1.5 * sg ** 3 * torch.exp(-2 * math.pi ** 2 * sg * sg * k2)  # (B, K, m)
    phase = (2 * math.pi) * torch.matmul(coords, centers.transpose(1, 2))
    return torch.stack([(env * torch.cos(phase)).sum(-1), -(env * torch.sin(phase)).sum(-1)])


def mixture_fourier(centers: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor,
                    coords: torch.Tensor) -> torch.Tensor:
    """Continuous 3D Fourier transform ``(B, K)`` complex of each mixture at ``coords (B, K, 3)`` cycles/px
    ``(kx, ky, kz)``: ``Σ_m a_m (2π)^{3/2} σ_m³ exp(−2π² σ_m² |k|²) exp(−2πi k·μ_m)`` (the sign and
    normalisation of the centered DFT, :mod:`cryolens.imaging.fft`, which it equals for well-sampled
    Gaussians). Differentiable in every input. Chunked over the Gaussians (``B·K·m ≤ 4M`` entries per chunk,
    checkpointed under autograd: :func:`_chunked_sum`). The slices on the image grid
    (:func:`mixture_projection_ft`, ``O(B·M·D)`` exponentials) are far cheaper than this at the same points
    (``O(B·D²·M)`` transcendentals)."""
    k2 = (coords * coords).sum(-1, keepdim=True)  # (B, K, 1)
    b = max(coords.shape[0], centers.shape[0])
    if centers.shape[1] == 0:
        return torch.complex(coords.new_zeros(b, coords.shape[1]), coords.new_zeros(b, coords.shape[1]))
    step = max(1, _CHUNK // (b * coords.shape[1]))
    out = _chunked_sum(_fourier_chunk, (coords, k2), (centers, sigmas, amplitudes), step)
    return torch.complex(out[0], out[1])

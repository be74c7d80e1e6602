"""Gaussian mixtures: voxelised volumes and their exact projections.

A mixture ``V(r) = Σ_j a_j exp(−|r − μ_j|² / (2 σ_j²))`` with centres ``μ_j`` in voxels
``(x, y, z)`` relative to the box centre. Its projection under ``R`` (image → volume frame)
is ``Σ_j a_j √(2π) σ_j exp(−|p − c_j|² / (2 σ_j²))`` with ``c_j`` the first two components of
``Rᵀ μ_j``; its 2D continuous Fourier transform is
``Σ_j a_j (2π)^{3/2} σ_j³ exp(−2π² σ_j² |k|²) exp(−2πi k·c_j)`` (k in cycles/px).
These closed forms are the independent references for the voxel projectors, and the
projection model of Gaussian-mixture volumes.
"""

from __future__ import annotations

import math

import torch

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

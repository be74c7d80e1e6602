"""Frequency and real-space grids, Fourier shells, soft masks.

Frequencies are in cycles/pixel in the centered layout: index ``i`` ↔ ``(i - D//2) / D``.
Coordinate vectors are ordered ``(x, y[, z])`` while arrays are indexed ``[(z,) y, x]``.
Fourier shell ``k`` holds the frequencies with ``round(|f| * D) == k``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .fft import fft2_centered, fft3_centered, ifft2_centered, ifft3_centered


def _axis(d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return (torch.arange(d, device=device, dtype=dtype) - d // 2) / d


def freq_grid_2d(d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(D, D, 2)`` frequencies ``(kx, ky)`` in cycles/px, indexed ``[y, x]``."""
    a = _axis(d, device, dtype)
    ky, kx = torch.meshgrid(a, a, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def freq_grid_3d(d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(D, D, D, 3)`` frequencies ``(kx, ky, kz)`` in cycles/px, indexed ``[z, y, x]``."""
    a = _axis(d, device, dtype)
    kz, ky, kx = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1)


def coord_grid_2d(d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(D, D, 2)`` pixel coordinates ``(x, y)`` relative to the centre ``D//2``, indexed ``[y, x]``."""
    return freq_grid_2d(d, device, dtype) * d


def coord_grid_3d(d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(D, D, D, 3)`` voxel coordinates ``(x, y, z)`` relative to the centre, indexed ``[z, y, x]``."""
    return freq_grid_3d(d, device, dtype) * d


def shell_index_2d(d: int, device=None) -> torch.Tensor:
    """``(D, D)`` integer Fourier shell ``round(|f| * D)`` of each pixel (long)."""
    r = coord_grid_2d(d, device, torch.float64).norm(dim=-1)
    return torch.round(r).long()


def shell_index_3d(d: int, device=None, dtype=torch.long) -> torch.Tensor:
    """``(D, D, D)`` integer Fourier shell ``round(|f| * D)`` of each voxel (``dtype``: long, or int32 for a
    grid kept in memory). Built from the three axes' squares (one float64 grid, not four)."""
    c = (torch.arange(d, device=device, dtype=torch.float64) - d // 2) ** 2
    r2 = c[:, None, None] + c[None, :, None]
    return torch.round((r2 + c[None, None, :]).sqrt_()).to(dtype)


def shell_sum(values: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Sum ``values (..., *S)`` over each shell of ``shells (*S)`` → ``(..., n_shells)``.

    Entries with a shell index ``>= n_shells`` are dropped.
    """
    flat_s = shells.reshape(-1)
    keep = flat_s < n_shells
    lead = values.shape[: values.dim() - shells.dim()]
    v = values.reshape(*lead, -1)[..., keep]
    idx = flat_s[keep].expand(*lead, -1)
    out = torch.zeros(*lead, n_shells, dtype=values.dtype, device=values.device)
    return out.scatter_add_(-1, idx, v)


def radial_average(values: torch.Tensor, shells: torch.Tensor, n_shells: int) -> torch.Tensor:
    """Mean of ``values`` over each shell → ``(..., n_shells)`` (0 for empty shells)."""
    s = shell_sum(values, shells, n_shells)
    count = shell_sum(torch.ones_like(shells, dtype=values.real.dtype), shells, n_shells)
    return s / count.clamp_min(1)


def soft_edge(r: torch.Tensor, radius: float, width: float) -> torch.Tensor:
    """1 inside ``radius``, a raised-cosine fall to 0 over ``width``, 0 beyond (same units as r)."""
    if width <= 0:
        return (r <= radius).to(r.dtype)
    t = ((r - radius) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def flatten_solvent(volume: torch.Tensor, radius: float, width: float = 5.0) -> torch.Tensor:
    """``volume (D, D, D)`` with everything outside a sphere of ``radius`` px (about the box centre
    ``D//2``) replaced by the solvent's mean, through a raised-cosine edge ``width`` px wide outside
    the radius: ``V·m + (1 − m)·b``, ``b`` the mean of ``V`` where ``m = 0`` (0 if the sphere fills the
    box). RELION's ``--flatten_solvent`` of the references (``softMaskOutsideMap``)."""
    d = volume.shape[-1]
    m = soft_edge(coord_grid_3d(d, volume.device, volume.dtype).norm(dim=-1), radius, width)
    outside = m == 0
    bg = volume[outside].mean() if bool(outside.any()) else volume.new_zeros(())
    return volume * m + (1 - m) * bg


def circular_mask(d: int, radius: float | None = None, width: float = 3.0, device=None) -> torch.Tensor:
    """``(D, D)`` soft circular mask in pixels (default radius ``D/2 - width``)."""
    radius = d / 2 - width if radius is None else radius
    return soft_edge(coord_grid_2d(d, device).norm(dim=-1), radius, width)


def spherical_mask(d: int, radius: float | None = None, width: float = 3.0, device=None) -> torch.Tensor:
    """``(D, D, D)`` soft spherical mask in voxels (default radius ``D/2 - width``)."""
    radius = d / 2 - width if radius is None else radius
    return soft_edge(coord_grid_3d(d, device).norm(dim=-1), radius, width)


def flip_centered(x: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """``x(−r)`` on a centered grid along ``dims``: index ``i → (D − i) mod D``, so the centre ``D//2``
    stays put (a plain ``torch.flip`` would move it by one pixel for even ``D``). On real-space images
    ``(..., D, D)`` this is the in-plane rotation by π about the image centre; on centered transforms it
    is ``k → −k``."""
    return torch.roll(torch.flip(x, dims), (1,) * len(dims), dims)


def lowpass_filter_2d(d: int, cutoff: float, width: float = 0.02, device=None) -> torch.Tensor:
    """``(D, D)`` soft low-pass filter in the centered Fourier layout; ``cutoff`` and
    ``width`` in cycles/px."""
    return soft_edge(freq_grid_2d(d, device).norm(dim=-1), cutoff, width)


def lowpass_filter_3d(d: int, cutoff: float, width: float = 0.02, device=None,
                      dtype=torch.float32) -> torch.Tensor:
    """``(D, D, D)`` soft low-pass filter in the centered Fourier layout; cycles/px."""
    return soft_edge(freq_grid_3d(d, device, dtype).norm(dim=-1), cutoff, width)


def gaussian_blur_2d(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images (..., D, D)`` real convolved with a Gaussian of standard deviation ``sigma`` px (in Fourier
    space: the transform times ``exp(−2π² σ² |f|²)``, ``f`` in cycles/px; periodic). ``sigma ≤ 0``: unchanged."""
    if sigma <= 0:
        return images
    d = images.shape[-1]
    k2 = freq_grid_2d(d, images.device, images.dtype).square().sum(-1)
    return ifft2_centered(fft2_centered(images) * torch.exp(-2 * math.pi**2 * sigma**2 * k2)).real


def gaussian_blur_3d(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """``volume (..., D, D, D)`` real convolved with a Gaussian of standard deviation ``sigma`` px, as
    :func:`gaussian_blur_2d` (Fourier space, periodic). ``sigma ≤ 0``: unchanged."""
    if sigma <= 0:
        return volume
    d = volume.shape[-1]
    k2 = freq_grid_3d(d, volume.device, volume.dtype).square().sum(-1)
    return ifft3_centered(fft3_centered(volume) * torch.exp(-2 * math.pi**2 * sigma**2 * k2)).real


def shell_filter_volume(volume: torch.Tensor, weights: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``volume (D, D, D)`` real with its Fourier transform multiplied by ``weights (D//2+1,)``, one per
    shell ``round(|f|·D)`` (shells past Nyquist, the corners, take the last weight). Same dtype and device."""
    d = volume.shape[-1]
    w = torch.as_tensor(weights, dtype=volume.dtype, device=volume.device)
    if w.shape != (d // 2 + 1,):
        raise ValueError(f"shell_filter_volume: need {d // 2 + 1} shell weights for D = {d}, got {tuple(w.shape)}")
    filt = w[shell_index_3d(d, volume.device).clamp(max=d // 2)]
    return ifft3_centered(fft3_centered(volume) * filt).real.to(volume.dtype)


def lowpass_volume(volume: torch.Tensor, resolution: float, pixel_size: float,
                   width_shells: float = 2.0) -> torch.Tensor:
    """``volume (D, D, D)`` real, low-passed at ``resolution`` Å (``pixel_size`` Å/px): frequencies up to
    ``pixel_size / resolution`` cycles/px (at most Nyquist) kept, then a raised-cosine fall over
    ``width_shells`` shells, as RELION's ``--ini_high``. Same dtype and device."""
    d = volume.shape[-1]
    cutoff = min(0.5, pixel_size / resolution)
    filt = lowpass_filter_3d(d, cutoff, width_shells / d, volume.device, volume.dtype)
    return ifft3_centered(fft3_centered(volume) * filt).real.to(volume.dtype)


def content_resolution(volume: torch.Tensor, pixel_size: float, drop: float = 1e-3) -> float:
    """The resolution (Å) up to which ``volume (D, D, D)`` holds content: where its rotationally averaged
    power ``P(k)`` (shells ``round(|f|·D)``) first falls by more than ``1 / drop`` within two shells,
    ``P(k) < drop · P(k − 2)`` (a low-pass cliff, such as :func:`lowpass_volume`'s or a post-processed map's;
    natural spectra and noise fall far slower), the last shell before the fall, ``k − 2``, gives
    ``D · pixel_size / (k − 2)``. Without such a fall the map holds content to Nyquist: ``2 · pixel_size``."""
    d = volume.shape[-1]
    n = d // 2 + 1
    power = radial_average(fft3_centered(volume.double()).abs().square(), shell_index_3d(d, volume.device), n)
    for k in range(3, n):
        if power[k] < drop * power[k - 2]:
            return d * pixel_size / (k - 2)
    return 2.0 * pixel_size

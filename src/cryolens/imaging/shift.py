"""Translations as phase ramps.

A ``shift`` ``(sx, sy)`` in pixels is where the particle centre sits relative to the image
centre: ``image(r) = projection(r − s)``, i.e. ``F(k) · exp(−2πi (kx·sx + ky·sy))`` on the
centered frequency grid (cycles/px). RELION's origin is the opposite: ``s = −rlnOrigin / pixel_size``.
"""

from __future__ import annotations

import math

import torch

from .fft import fft2_centered, ifft2_centered
from .grids import freq_grid_2d


def phase_ramp(shifts: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, D, D)`` complex factors ``exp(−2πi k·s)`` for ``shifts: (N, 2)`` px ``(x, y)``."""
    f = freq_grid_2d(size, device=shifts.device, dtype=shifts.dtype)
    # cycles/px · px = cycles → radians
    phase = -2 * math.pi * torch.einsum("yxc,nc->nyx", f, shifts)
    return torch.polar(torch.ones_like(phase), phase)


def phase_shift(images_ft: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift centered transforms ``images_ft: (N, D, D)`` complex by ``shifts: (N, 2)`` px."""
    return images_ft * phase_ramp(shifts.to(images_ft.real.dtype), images_ft.shape[-1])


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift real images ``(N, D, D)`` by ``shifts (N, 2)`` px (sub-pixel, periodic)."""
    return ifft2_centered(phase_shift(fft2_centered(images), shifts)).real


def shift_volume(volume: torch.Tensor, shift: tuple[float, float, float] | torch.Tensor) -> torch.Tensor:
    """``V'(r) = V(r − s)`` for a real ``(D, D, D)`` map ``[z, y, x]`` and ``s = (dz, dy, dx)`` voxels
    (sub-voxel, periodic: for integer ``s`` equal to ``torch.roll(volume, s, dims=(0, 1, 2))``)."""
    v = volume
    s = torch.as_tensor(shift, dtype=torch.float64, device=v.device)
    spec = torch.fft.rfftn(v.double())
    axes = [torch.fft.fftfreq(n, device=v.device, dtype=torch.float64) for n in v.shape[:-1]]
    axes.append(torch.fft.rfftfreq(v.shape[-1], device=v.device, dtype=torch.float64))
    kz, ky, kx = torch.meshgrid(*axes, indexing="ij")
    phase = -2 * math.pi * (kz * s[0] + ky * s[1] + kx * s[2])
    return torch.fft.irfftn(spec * torch.polar(torch.ones_like(phase), phase), s=v.shape).to(v.dtype)

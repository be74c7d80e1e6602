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
    """``(N, D, D)`` complex factors ``exp(−2πi k·s)`` for ``shifts: (N, 2)`` px ``(x, y)``, made as the outer
    product ``exp(−2πi ky sy) · exp(−2πi kx sx)`` of two ``(N, D)`` ramps (2·D transcendentals per image, not D²)."""
    f = freq_grid_2d(size, device=shifts.device, dtype=shifts.dtype)[0, :, 0]  # (D,) the x axis = the y axis
    # cycles/px · px = cycles → radians
    phase = -2 * math.pi * f[None, None, :] * shifts[:, :, None]  # (N, 2, D): x then y
    ramp = torch.polar(torch.ones_like(phase), phase)
    return ramp[:, 1, :, None] * ramp[:, 0, None, :]


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


def center_of_mass(volume: torch.Tensor) -> torch.Tensor:
    """``(3,)`` float64 ``(z, y, x)`` voxels from the box centre ``D//2`` of the positive density of a
    ``(D, D, D)`` map (negative values — noise, CTF ripples — are ignored)."""
    v = volume.double().clamp_min(0)
    total = v.sum()
    if not bool(total > 0):
        raise ValueError("center_of_mass: the map has no positive density")
    axes = [torch.arange(n, device=v.device, dtype=torch.float64) - n // 2 for n in v.shape]
    return torch.stack([(v.sum(dim=tuple(j for j in range(3) if j != i)) * axes[i]).sum() / total
                        for i in range(3)])


def center_volume(volume: torch.Tensor, passes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The map moved so its :func:`center_of_mass` is at the box centre (cryoSPARC's "center structures",
    RELION's ``relion_image_handler --shift_com``), by a periodic sub-voxel shift; ``passes`` repeats
    it (the wrapped edge moves the estimate slightly). Returns ``(centred map, total shift (z, y, x) voxels
    applied)``: ``centred(r) = volume(r − shift)``."""
    total = torch.zeros(3, dtype=torch.float64, device=volume.device)
    out = volume
    for _ in range(passes):
        step = -center_of_mass(out)
        out = shift_volume(out, step)
        total = total + step
    return out, total


def center_volumes(volumes: torch.Tensor) -> torch.Tensor:
    """``(K, D, D, D)`` maps each moved by :func:`center_volume`; a map with no positive density (a class
    that emptied) is replaced by the mean of the centred others, so that it starts a classification as
    a copy of the population rather than as nothing (ValueError when every map is empty)."""
    full = [bool((v > 0).any()) for v in volumes]
    if not any(full):
        raise ValueError("center_volumes: no map has positive density")
    centred = [center_volume(v)[0] if ok else None for v, ok in zip(volumes, full)]
    mean = torch.stack([c for c in centred if c is not None]).mean(0)
    return torch.stack([c if c is not None else mean for c in centred])


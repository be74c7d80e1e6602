"""Physics of box sizes and spectra: Fourier cropping of images, Fourier resizing of maps, and the
per-shell power spectra of a map and of its projector's padded transform (the ``τ²`` of the Class3D
and ab initio priors, :mod:`cryolens.inference.prior`). Conventions: centered transforms, shells
``round(|f|·D)`` (docs/CONVENTIONS.md)."""

from __future__ import annotations

import functools

import torch

from .fft import abs2, fft2_centered, fft3_centered, ifft3_centered
from .grids import shell_index_2d, shell_index_3d


def fourier_crop_images(images_ft: torch.Tensor, size: int) -> torch.Tensor:
    """Centered transforms ``(B, D, D)`` → ``(B, d, d)`` (the central ``d × d`` frequencies), scaled by
    ``(d/D)²`` so that the real-space images keep their values (a down-sampling to pixel ``px·D/d``)."""
    d0 = images_ft.shape[-1]
    lo = d0 // 2 - size // 2
    return images_ft[..., lo:lo + size, lo:lo + size] * (size / d0) ** 2


def resize_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier crop or zero-pad a real ``(D, D, D)`` volume to ``(d, d, d)``: the map at pixel
    ``px·D/d``, its transform scaled by ``(d/D)²`` so that its projections match images cropped by
    :func:`fourier_crop_images` (voxel values scale by ``D/d``: a projection sums ``d`` voxels of
    ``D/d`` times the length). The unpaired Nyquist planes (index 0 of each axis) of the smaller box
    are dropped, so the result stays the transform of a real map."""
    d0 = volume.shape[-1]
    if size == d0:
        return volume.clone()
    f = fft3_centered(volume)
    if size > d0:
        f[0], f[:, 0], f[:, :, 0] = 0, 0, 0
    if size < d0:
        lo = d0 // 2 - size // 2
        g = f[lo:lo + size, lo:lo + size, lo:lo + size].clone()
        g[0], g[:, 0], g[:, :, 0] = 0, 0, 0
    else:
        g = f.new_zeros((size, size, size))
        lo = size // 2 - d0 // 2
        g[lo:lo + d0, lo:lo + d0, lo:lo + d0] = f
    return ifft3_centered(g).real * (size / d0) ** 2


def power_spectrum(volume: torch.Tensor) -> torch.Tensor:
    """``(D//2+1,)`` float64 per-shell mean power ``⟨|Ṽ(f)|²⟩`` of a real ``(D, D, D)`` volume's
    unnormalised centered transform (shells ``round(|f|·D)``; the units of central-slice values, so
    that it is directly a prior variance ``τ²`` of the values the likelihood compares)."""
    size = volume.shape[-1]
    nsh = size // 2 + 1
    p = fft3_centered(volume.double()).abs().square()
    shells = shell_index_3d(size, device=volume.device).reshape(-1)
    keep = shells < nsh
    s = torch.zeros(nsh, dtype=torch.float64, device=volume.device).index_add_(0, shells[keep], p.reshape(-1)[keep])
    n = torch.zeros(nsh, dtype=torch.float64, device=volume.device).index_add_(
        0, shells[keep], torch.ones_like(p.reshape(-1)[keep]))
    return s / n.clamp_min(1)


def projector_power_spectrum(volume_ft: torch.Tensor, size: int) -> torch.Tensor:
    """``(size//2+1,)`` float64 per-shell mean power of a projector's transform ``(pD, pD, pD)`` (the
    gridding-corrected, zero-padded transform of :func:`~cryolens.imaging.slice.prepare_volume_ft`): the
    radial mean over padded voxels with ``round(r / pad) = s``, as RELION's ``τ²`` of a class (the power
    spectrum its ``Projector::computeFourierTransformMap`` returns for the reference it projects). Same
    units as :func:`power_spectrum` (zero padding keeps the unnormalised sums); unlike it, a map
    low-passed to zero keeps the small power the gridding correction spreads into every shell
    (~1e-4 … 1e-6 of the peak), which is what lets RELION's classes grow past their start's low-pass."""
    padded = volume_ft.shape[-1]
    nsh = size // 2 + 1
    keep, shells, count = _padded_shells(padded, size, str(volume_ft.device))
    p = abs2(volume_ft.reshape(-1)[keep]).double()
    return torch.zeros(nsh, dtype=torch.float64, device=volume_ft.device).index_add_(0, shells, p) / count


@functools.lru_cache(maxsize=16)
def _padded_shells(padded: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For :func:`projector_power_spectrum` (computed once per grid): the flat indices of the padded
    voxels with ``round(r / pad) < size//2 + 1``, their shell, and the voxel count of each shell."""
    pad = padded // size
    nsh = size // 2 + 1
    shells = torch.round(shell_index_3d(padded, device=device).double() / pad).long().reshape(-1)
    keep = torch.nonzero(shells < nsh).reshape(-1)
    count = torch.bincount(shells[keep], minlength=nsh).double().clamp_min(1)
    return keep, shells[keep], count


def image_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """``(D//2+1,)`` float64 per-shell mean power ``⟨|Ỹ(f)|²⟩`` of real images ``(N, D, D)`` (their
    unnormalised centered 2D transforms, averaged over the images and over each shell ``round(|f|·D)``;
    corner frequencies past Nyquist left out). White noise of variance ``s²`` gives ``s² D²`` in every shell."""
    size = images.shape[-1]
    nsh = size // 2 + 1
    p = fft2_centered(images.double()).abs().square().mean(0).reshape(-1)
    shells = shell_index_2d(size, device=images.device).reshape(-1)
    keep = shells < nsh
    s = torch.zeros(nsh, dtype=torch.float64, device=images.device).index_add_(0, shells[keep], p[keep])
    return s / torch.bincount(shells[keep], minlength=nsh).double().clamp_min(1)

"""One-call projection of a real volume through the half (``kx ≥ 0``) of its oversampled transform.

A real volume's transform is Hermitian, ``Ṽ(−k) = conj Ṽ(k)``, so the ``kx ≥ 0`` half holds all of it:
:func:`half_sampling_volume` computes only that half (a real-to-complex FFT) and only the non-zero part of
the zero-padded volume along each axis in turn (the padding is ``pad − 1`` of every ``pad`` voxels), and
:func:`extract_from_half_sampling_volume` samples a slice point ``p`` with ``p_x < 0`` at ``−p`` and
conjugates. Trilinear interpolation commutes with that mirror (the grid is symmetric about ``k = 0``), so
the slices equal :func:`~cryolens.imaging.slice.extract_slices` of the full transform from
:func:`~cryolens.imaging.slice.prepare_volume_ft` up to float rounding, for about half its time and a third
of its memory. Layouts and conventions are those of :mod:`cryolens.imaging.slice` (centered, ``[z, y, x]``,
rotations image → volume frame, frequencies beyond Nyquist zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .slice import _friedel_fill, _half_columns, _slice_points, gridding_kernel


def _new_like(x: torch.Tensor, shape: list[int], zero: bool = True) -> torch.Tensor:
    """A tensor of ``shape`` laid out in ``x``'s memory order (an FFT along a leading axis returns that axis
    innermost; copying such a result into the standard order is a transpose, here many times the FFT's cost)."""
    order = sorted(range(x.dim()), key=lambda i: -x.stride(i))  # outermost first
    mem = (x.new_zeros if zero else x.new_empty)([shape[i] for i in order])
    return mem.permute([order.index(i) for i in range(x.dim())])


def _wrapped_pad(x: torch.Tensor, padded: int, dim: int) -> torch.Tensor:
    """Zero-pad axis ``dim`` of ``x`` from ``D`` to ``Dp`` and ``ifftshift`` it, in one copy: the centre sample
    ``D // 2`` goes to index 0, the samples before it to the end (as ``ifftshift(pad_volume(x))``)."""
    d = x.shape[dim]
    h = d // 2
    shape = list(x.shape)
    shape[dim] = padded
    out = _new_like(x, shape, zero=False)
    out.narrow(dim, 0, d - h).copy_(x.narrow(dim, h, d - h))
    out.narrow(dim, d - h, padded - d).zero_()
    out.narrow(dim, padded - h, h).copy_(x.narrow(dim, 0, h))
    return out


def half_sampling_volume(volume: torch.Tensor, pad: int = 2, gridding_correction: bool = True) -> torch.Tensor:
    """Real ``(D, D, D)`` volume (``D`` even) → the ``kx ≥ 0`` half of its ``pad``-times oversampled transform
    laid out for :func:`extract_from_half_sampling_volume`: a ``(1, 2, Dp+1, Dp+1, Dp/2+1)`` (real, imaginary)
    view (strides in the FFT's own memory order), ``z`` and ``y`` centered with the ``+Nyquist`` plane wrapped
    in, ``x`` from frequency 0 to ``+Nyquist``. Gridding correction as
    :func:`~cryolens.imaging.slice.prepare_volume_ft`."""
    d = volume.shape[-1]
    padded = pad * d
    if gridding_correction:
        volume = volume / gridding_kernel(d, padded, device=volume.device, dtype=volume.dtype)
    # (−1)^(z+y) on the input centres the output along z and y (a shift by Dp/2), for the cost of one D³ product
    parity = 1 - 2 * (torch.arange(d, device=volume.device) % 2).to(volume.dtype)
    volume = volume * (parity[:, None, None] * parity[None, :, None])
    # the 3D FFT of the zero-padded volume one axis at a time, each on the non-zero rows only
    h = torch.fft.rfft(_wrapped_pad(volume, padded, -1), dim=-1)      # (D, D, Dp/2+1)
    h = torch.fft.fft(_wrapped_pad(h, padded, -2), dim=-2)            # (D, Dp, Dp/2+1)
    h = torch.fft.fft(_wrapped_pad(h, padded, -3), dim=-3)            # (Dp, Dp, Dp/2+1)
    out = _new_like(h, [padded + 1, padded + 1, padded // 2 + 1], zero=False)
    out[:padded, :padded] = h
    del h
    out[padded, :padded] = out[0, :padded]  # +Nyquist planes: the −Nyquist ones (periodic)
    out[:, padded] = out[:, 0]
    return torch.view_as_real(out).permute(3, 0, 1, 2)[None]


def extract_from_half_sampling_volume(sv: torch.Tensor, rotations: torch.Tensor, size: int) -> torch.Tensor:
    """Central slices ``(N, D, D)`` complex (centered, zero beyond Nyquist) along ``rotations (N, 3, 3)`` from
    :func:`half_sampling_volume`'s layout. Only the ``kx ≥ 0`` half of each slice is interpolated (the rest by
    Friedel symmetry); a point with ``p_x < 0`` is read at ``−p`` and conjugated. Trilinear, differentiable."""
    padded = sv.shape[-2] - 1
    cols = _half_columns(size, sv.device)
    pts, mask = _slice_points(rotations.to(sv.dtype), size, padded, cols)
    q = pts - padded // 2  # (N, D, C, 3) frequency × Dp, (x, y, z)
    sign = torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)
    q = q * sign
    # grid_sample's [−1, 1] with align_corners: x over Dp/2 + 1 samples from 0, y and z over Dp + 1 centered
    grid = torch.cat([q[..., :1] * (4.0 / padded) - 1, q[..., 1:] * (2.0 / padded)], dim=-1)
    out = F.grid_sample(sv, grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0] * mask
    return _friedel_fill(torch.complex(out[0], out[1] * sign[..., 0]), size)

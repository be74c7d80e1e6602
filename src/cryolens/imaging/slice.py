"""Fourier-slice extraction (trilinear) and its exact adjoint, insertion with weights.

By the Fourier slice theorem the 2D transform of ``image(x, y) = ∫ V(R·[x, y, z]ᵀ) dz`` is
the central slice of ``Ṽ`` sampled at ``R · [kx, ky, 0]ᵀ``. Volumes in Fourier space are in
the centered layout of :mod:`cryolens.imaging.fft`, indexed ``[z, y, x]``; they may be
oversampled: a ``(Dp, Dp, Dp)`` transform of a volume zero-padded from ``D`` to ``Dp = p·D``
is sampled at the ``D × D`` slice frequencies ``(i − D//2) / D`` cycles/px, which land on
padded-grid coordinates ``f · Dp + Dp//2``. Frequencies beyond Nyquist (``|f| > 0.5``) are
zero in both directions, so :func:`insert_slices` is the exact adjoint of
:func:`extract_slices`: ``<extract(V), S> = <V, insert(S)>``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import native
from .fft import fft3_centered, ifft3_centered
from .grids import freq_grid_2d


def _slice_points(rotations: torch.Tensor, size: int, padded: int,
                  columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded-grid coordinates ``(N, D, C, 3)`` (x, y, z) of the slice pixels (all ``D`` columns,
    or the given ``columns``) and their ``(D, C)`` mask of frequencies inside Nyquist."""
    f = freq_grid_2d(size, device=rotations.device, dtype=rotations.dtype)
    if columns is not None:
        f = f[:, columns]
    mask = f.norm(dim=-1) <= 0.5
    f3 = torch.cat([f, torch.zeros_like(f[..., :1])], dim=-1)  # (D, C, 3)
    # points in the volume frame: p = R · f  (row vectors: f @ Rᵀ)
    pts = torch.einsum("yxj,nij->nyxi", f3, rotations)
    return pts * padded + padded // 2, mask


def sampling_volume(volume_ft: torch.Tensor) -> torch.Tensor:
    """Lay out a centered 3D transform ``(Dp, Dp, Dp)`` for :func:`extract_from_sampling_volume`:
    channels first (real, imag — or one channel for a real array such as a Hartley transform)
    and one extra wrapped voxel on the high side of each axis, ``(1, C, Dp+1, Dp+1, Dp+1)``, so
    that trilinear sampling up to ``+Nyquist`` reads the periodic ``−Nyquist`` samples. Make it
    once per volume when extracting many batches."""
    v = torch.view_as_real(volume_ft).permute(3, 0, 1, 2) if volume_ft.is_complex() else volume_ft[None]
    return F.pad(v[None], (0, 1, 0, 1, 0, 1), mode="circular")


def _half_columns(size: int, device) -> torch.Tensor:
    """Columns with ``kx ≥ 0`` plus the ``−Nyquist`` column 0: ``[0, D/2, …, D−1]``."""
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(size // 2, size)]).to(device)


def _friedel_fill(half: torch.Tensor, size: int) -> torch.Tensor:
    """Full ``(…, D, D)`` centered slice from the :func:`_half_columns` part of a Hermitian one,
    ``F(−k) = conj(F(k))`` (indices wrap: ``−Nyquist`` is its own partner)."""
    full = half.new_zeros(*half.shape[:-1], size)
    full[..., 0] = half[..., 0]
    full[..., size // 2:] = half[..., 1:]
    x = torch.arange(1, size // 2, device=half.device)
    y = torch.arange(size, device=half.device)
    src = full[..., (size - y) % size, :][..., size - x]
    full[..., 1:size // 2] = src.conj()
    return full


def extract_from_sampling_volume(sv: torch.Tensor, rotations: torch.Tensor, size: int,
                                 complex_output: bool = True, hermitian: bool = False) -> torch.Tensor:
    """Low-level slice extraction from :func:`sampling_volume`'s layout ``(1, C, Dp+1, …)``.

    rotations: ``(N, 3, 3)``. Returns ``(N, D, D)`` complex (``C = 2``) or real (``C = 1``),
    centered layout, zero beyond Nyquist. Trilinear (``grid_sample``), differentiable.
    hermitian: the transform is that of a real volume (``Ṽ(−k) = conj Ṽ(k)``): only the
    ``kx ≥ 0`` half of each slice is interpolated and the rest filled by symmetry (≈2× faster).
    """
    padded = sv.shape[-1] - 1
    hermitian = hermitian and complex_output and sv.shape[1] == 2
    cols = _half_columns(size, sv.device) if hermitian else None
    pts, mask = _slice_points(rotations.to(sv.dtype), size, padded, cols)
    # padded-grid coordinate c ∈ [0, Dp] → grid_sample's [−1, 1] with align_corners=True on Dp+1 samples
    grid = (2.0 / padded) * pts - 1
    out = F.grid_sample(sv, grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    out = out * mask  # (C, N, D, D or D/2+1)
    if complex_output and sv.shape[1] == 2:
        c = torch.complex(out[0], out[1])
        return _friedel_fill(c, size) if hermitian else c
    return out[0]


def extract_points_from_sampling_volume(sv: torch.Tensor, rotations: torch.Tensor, size: int,
                                        pixels: torch.Tensor) -> torch.Tensor:
    """Slice values at some pixels only: ``(N, P)`` (complex for ``C = 2``, else real) — equal to
    ``extract_from_sampling_volume(sv, rotations, size).flatten(-2)[:, pixels]`` without
    interpolating the other pixels (a likelihood limited to low shells needs a few percent of them).

    sv: :func:`sampling_volume` layout. rotations: ``(N, 3, 3)``. pixels: ``(P,)`` int64 flat indices
    into the centered ``D × D`` slice (``D = size``).
    """
    padded = sv.shape[-1] - 1
    f = freq_grid_2d(size, device=sv.device, dtype=sv.dtype).reshape(-1, 2)[pixels.to(sv.device)]  # (P, 2)
    inside = f.norm(dim=-1) <= 0.5
    f3 = torch.cat([f, torch.zeros_like(f[:, :1])], dim=-1)
    pts = torch.einsum("pj,nij->npi", f3, rotations.to(sv.dtype)) * padded + padded // 2  # (N, P, 3)
    grid = ((2.0 / padded) * pts - 1)[None, :, :, None, :]  # (1, N, P, 1, 3)
    out = F.grid_sample(sv, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, ..., 0]
    out = out * inside  # (C, N, P)
    return torch.complex(out[0], out[1]) if sv.shape[1] == 2 else out[0]


def extract_slices(volume_ft: torch.Tensor, rotations: torch.Tensor, size: int | None = None,
                   hermitian: bool = False) -> torch.Tensor:
    """Central slices of a 3D transform.

    volume_ft: ``(Dp, Dp, Dp)`` complex or real (e.g. Hartley), centered layout, ``[z, y, x]``.
    rotations: ``(N, 3, 3)``, image frame → volume frame.
    size: slice box ``D`` (default ``Dp``; ``Dp / D`` is the oversampling factor).
    hermitian: ``volume_ft`` is the transform of a real volume; halves the interpolation work.
    Returns ``(N, D, D)`` in ``volume_ft``'s dtype, centered layout, zero beyond Nyquist.
    """
    size = volume_ft.shape[-1] if size is None else size
    return extract_from_sampling_volume(sampling_volume(volume_ft), rotations, size, volume_ft.is_complex(),
                                        hermitian)


def hermitian_symmetrize(x: torch.Tensor, conjugate: bool = True) -> torch.Tensor:
    """``x(k) + conj(x(−k))`` on a centered ``(Dp, Dp, Dp)`` grid (index ``i`` ↔ ``Dp − i``, wrapping;
    ``conjugate=False`` for real weights: ``x(k) + x(−k)``)."""
    return _add_mirrored_(x.clone(), x, conjugate)


def _add_mirrored_(out: torch.Tensor, x: torch.Tensor, conjugate: bool) -> torch.Tensor:
    """``out += conj(x(−k))`` in place (``out`` may be ``x``): the mirror ``x(−k)`` at index ``i`` is the
    flipped grid at ``i − 1`` (wrapping), added as 2 × 2 × 2 blocks so that only one flipped copy is made."""
    f = torch.flip(x, (-3, -2, -1))
    if conjugate:
        f = f.conj()
    parts = ((slice(1, None), slice(None, -1)), (slice(0, 1), slice(-1, None)))  # (to, from) along one axis
    for dz, sz in parts:
        for dy, sy in parts:
            for dx, sx in parts:
                out[..., dz, dy, dx] += f[..., sz, sy, sx]
    return out


def staging_grid(padded: int, channels: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Zeroed accumulation buffer for :func:`scatter_slices`: ``(channels, (Dp+2)³)`` real.

    Channels are ``(re, im, weight)`` for complex slices, ``(value, weight)`` for real ones. The two
    extra planes per axis take trilinear corners up to ``Dp + 1`` without a modulo;
    :func:`finish_staging` folds them back (the transform is periodic)."""
    return torch.zeros(channels, (padded + 2) ** 3, device=device, dtype=dtype)


# images per scatter call: about this many slice pixels, so that the per-pixel temporaries stay a few MB
SCATTER_POINTS = 1 << 18


@functools.lru_cache(maxsize=8)
def _pixel_multiplicity(size: int, hermitian: bool, rdtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, C)`` multiplicity of the scattered slice pixels — 0 beyond Nyquist, ½ on the self-partnered
    columns of a half slice, else 1 — and the ``(C,)`` columns (all, or :func:`_half_columns`). Cached: callers
    must not modify them."""
    cols = _half_columns(size, device) if hermitian else torch.arange(size, device=device)
    mult = (freq_grid_2d(size, device=device, dtype=rdtype)[:, cols].norm(dim=-1) <= 0.5).to(rdtype)
    if hermitian:
        mult[:, :2] *= 0.5  # kx = 0 and kx = −Nyquist columns hold their own partners: count each half
    return mult, cols


def _scatter_geometry(rotations: torch.Tensor, size: int, padded: int, hermitian: bool, rdtype):
    """Trilinear footing of the slice pixels of :func:`scatter_slices`: ``flat (N·D·C,)`` staging index of each
    pixel's lower corner, ``frac`` its ``(x, y, z)`` offsets from it (three ``(N·D·C,)``), ``mult (D, C)`` pixel
    multiplicity (:func:`_pixel_multiplicity`) and the columns, or None."""
    cols = _half_columns(size, rotations.device) if hermitian else None
    pts, mask = _slice_points(rotations.to(rdtype), size, padded, cols)
    mult = _pixel_multiplicity(size, hermitian, rdtype, rotations.device)[0]
    g = padded + 2
    pts = torch.where(mask[..., None], pts, torch.full_like(pts, padded // 2))  # keep masked points in range
    base = torch.floor(pts)
    frac = (pts - base).reshape(-1, 3).unbind(-1)
    base = base.long()
    flat = ((base[..., 2] * g + base[..., 1]) * g + base[..., 0]).reshape(-1)
    return flat, frac, mult, cols


def _scatter_with(staging: torch.Tensor, geometry, slices: torch.Tensor, weights: torch.Tensor | None,
                  padded: int) -> None:
    """Add each channel's pixel values times their 8 trilinear corner weights at the corners: one ``index_add_``
    per corner and channel, on ``(N·D·C,)`` vectors (no ``(N·D·C·8,)`` index or dense grid per call)."""
    flat, (fx, fy, fz), mult, cols = geometry
    rdtype = staging.dtype
    sl = slices[..., cols] if cols is not None else slices
    wt = torch.ones_like(sl.real) if weights is None else (weights[..., cols] if cols is not None else weights)
    chans = [sl.real, sl.imag, wt] if slices.is_complex() else [sl, wt]
    values = [(v.to(rdtype) * mult).reshape(-1) for v in chans]
    g = padded + 2
    for dz in (0, 1):
        wz = fz if dz else 1 - fz
        for dy in (0, 1):
            wzy = wz * (fy if dy else 1 - fy)
            for dx in (0, 1):
                w = wzy * (fx if dx else 1 - fx)
                idx = flat + (dz * g * g + dy * g + dx)
                for c, v in enumerate(values):
                    staging[c].index_add_(0, idx, v * w)


def _images_per_call(size: int, hermitian: bool) -> int:
    """How many ``(size, size)`` slices make about ``SCATTER_POINTS`` scattered pixels."""
    return max(1, SCATTER_POINTS // (size * (size // 2 + 2 if hermitian else size)))


def scatter_slices(staging: torch.Tensor, slices: torch.Tensor, rotations: torch.Tensor, padded: int,
                   weights: torch.Tensor | None = None, hermitian: bool = False, voxel_major: bool = False) -> None:
    """Low-level, in place: add trilinear scatters of ``slices (N, D, D)`` (and ``weights``, default 1)
    along ``rotations (N, 3, 3)`` into ``staging`` from :func:`staging_grid`. With ``hermitian`` only
    the ``kx ≥ 0`` half is scattered; :func:`finish_staging` (``hermitian=True``) completes it. Images
    go ``SCATTER_POINTS`` slice pixels at a time (bounded temporaries). voxel_major: ``staging`` is laid out
    ``((Dp+2)³, channels)`` (its transpose is a staging grid; the compiled kernel only: check
    :func:`scatter_voxel_major_available`)."""
    hermitian = hermitian and slices.is_complex()
    size = slices.shape[-1]
    if voxel_major or native.usable(staging, padded):
        if voxel_major and not scatter_voxel_major_available(staging, padded):
            raise ValueError("scatter_slices: a voxel-major staging grid needs the compiled kernel on the CPU")
        mult, cols = _pixel_multiplicity(size, hermitian, staging.dtype, staging.device)
        native.scatter(staging, slices, rotations, padded, weights, cols, mult, voxel_major)
        return
    step = _images_per_call(size, hermitian)
    for a in range(0, slices.shape[0], step):
        geometry = _scatter_geometry(rotations[a:a + step], size, padded, hermitian, staging.dtype)
        _scatter_with(staging, geometry, slices[a:a + step], None if weights is None else weights[a:a + step],
                      padded)


def scatter_voxel_major_available(staging: torch.Tensor, padded: int) -> bool:
    """Whether :func:`scatter_slices` can fill ``staging`` laid out voxel-major (the compiled kernel serves it)."""
    return native.usable(staging, padded)


def scatter_slices_shared(stagings: list[torch.Tensor], slices: list[torch.Tensor], rotations: torch.Tensor,
                          padded: int, weights: list[torch.Tensor | None], hermitian: bool = False) -> None:
    """:func:`scatter_slices` of several slice stacks ``(N, D, D)`` along the same ``rotations`` into
    their own stagings (e.g. one per class), the trilinear geometry computed once per chunk of images."""
    hermitian = hermitian and slices[0].is_complex()
    size = slices[0].shape[-1]
    if all(native.usable(st, padded) for st in stagings):
        for st, sl, wt in zip(stagings, slices, weights, strict=True):
            scatter_slices(st, sl, rotations, padded, wt, hermitian)
        return
    step = _images_per_call(size, hermitian)
    for a in range(0, slices[0].shape[0], step):
        geometry = _scatter_geometry(rotations[a:a + step], size, padded, hermitian, stagings[0].dtype)
        for st, sl, wt in zip(stagings, slices, weights, strict=True):
            _scatter_with(st, geometry, sl[a:a + step], None if wt is None else wt[a:a + step], padded)


def _fold_into(out: torch.Tensor, plane: torch.Tensor, padded: int) -> None:
    """``out (Dp, Dp, Dp)`` = one staging channel ``(Dp+2)³`` with its two extra planes per axis wrapped onto
    planes 0 and 1 (the transform is periodic): the 8 combinations of kept / wrapped ranges of the 3 axes."""
    keep, wrap = (slice(0, padded), slice(0, padded)), (slice(0, 2), slice(padded, padded + 2))  # (to, from)
    out.copy_(plane[:padded, :padded, :padded])
    for az in (keep, wrap):
        for ay in (keep, wrap):
            for ax in (keep, wrap):
                if az is keep and ay is keep and ax is keep:
                    continue
                out[az[0], ay[0], ax[0]] += plane[az[1], ay[1], ax[1]]


def finish_staging(staging: torch.Tensor, padded: int, is_complex: bool = True,
                   hermitian: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a :func:`staging_grid` back to ``(Dp, Dp, Dp)`` and split it into ``(data, weight)``;
    with ``hermitian``, complete the half scatter by ``x(k) + conj x(−k)``. ``staging`` is left as it is."""
    g = padded + 2
    st = staging.reshape(-1, g, g, g)
    weight = st.new_empty((padded,) * 3)
    if is_complex:
        data = st.new_empty((padded,) * 3, dtype=torch.complex128 if st.dtype == torch.float64 else torch.complex64)
        outs = list(torch.view_as_real(data).unbind(-1))
    else:
        data = st.new_empty((padded,) * 3)
        outs = [data]
    for c, out in enumerate(outs + [weight]):  # written straight into the outputs: no copy of the staging grid
        _fold_into(out, st[c], padded)
    if hermitian and is_complex:
        data = _add_mirrored_(data, data, True)  # the flip inside is a copy: in place is safe
        weight = _add_mirrored_(weight, weight, False)
    return data, weight


def insert_slices(slices: torch.Tensor, rotations: torch.Tensor, padded: int | None = None,
                  weights: torch.Tensor | None = None, hermitian: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of :func:`extract_slices`: scatter slices into a 3D transform.

    slices: ``(N, D, D)`` complex or real, centered layout. rotations: ``(N, 3, 3)``.
    padded: size ``Dp`` of the 3D grid (default ``D``). weights: optional ``(N, D, D)`` real,
    accumulated the same way (e.g. CTF² for a Wiener filter; default 1).
    hermitian: the slices (and weights) are transforms of real images, ``S(−k) = conj S(k)``: only
    the ``kx ≥ 0`` half is scattered and the grid is completed by symmetry (≈2× faster, same result
    inside the Nyquist sphere). To accumulate many batches, use :func:`staging_grid`,
    :func:`scatter_slices` and one :func:`finish_staging` at the end.
    Returns ``(data (Dp, Dp, Dp), weight (Dp, Dp, Dp) real)``; ``data = Σ_n Pᵀ_n slices_n``.
    """
    padded = slices.shape[-1] if padded is None else padded
    staging = staging_grid(padded, 3 if slices.is_complex() else 2, slices.device, slices.real.dtype)
    scatter_slices(staging, slices, rotations, padded, weights, hermitian)
    return finish_staging(staging, padded, slices.is_complex(), hermitian)


@functools.lru_cache(maxsize=4)
def gridding_kernel(size: int, padded: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(D, D, D)`` real-space apodisation ``sinc²(r / Dp)`` that trilinear interpolation on
    a ``Dp³`` Fourier grid imposes on a ``D³`` volume (r in voxels from the centre). Cached (the last four
    sizes): callers must not modify it in place."""
    c = (torch.arange(size, device=device, dtype=torch.float64) - size // 2) ** 2  # one axis, voxels² from the centre
    r = (c[:, None, None] + c[None, :, None] + c[None, None, :]).sqrt_().div_(padded)
    return torch.sinc(r).square_().to(dtype)


def pad_volume(volume: torch.Tensor, padded: int) -> torch.Tensor:
    """Zero-pad a ``(D, D, D)`` volume to ``(Dp, Dp, Dp)`` keeping the centre voxel centred."""
    d = volume.shape[-1]
    lo = padded // 2 - d // 2
    out = volume.new_zeros((padded, padded, padded))
    out[lo:lo + d, lo:lo + d, lo:lo + d] = volume
    return out


def crop_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``(D, D, D)`` crop of a ``(Dp, Dp, Dp)`` volume (inverse of :func:`pad_volume`)."""
    padded = volume.shape[-1]
    lo = padded // 2 - size // 2
    return volume[lo:lo + size, lo:lo + size, lo:lo + size]


def prepare_volume_ft(volume: torch.Tensor, pad: int = 2, gridding_correction: bool = True) -> torch.Tensor:
    """Real ``(D, D, D)`` volume → oversampled centered transform ``(pD, pD, pD)`` complex,
    ready for :func:`extract_slices`. With ``gridding_correction`` the volume is first divided
    by :func:`gridding_kernel` so trilinear slices are not apodised (as RELION's projector)."""
    d = volume.shape[-1]
    padded = pad * d
    if gridding_correction:
        volume = volume / gridding_kernel(d, padded, device=volume.device, dtype=volume.dtype)
    return fft3_centered(pad_volume(volume, padded))


def _real_centre_of_ifft(volume_ft: torch.Tensor, size: int) -> torch.Tensor:
    """``crop_volume(ifft3_centered(volume_ft).real, size)`` without shifting the ``(Dp, Dp, Dp)`` grids (even
    ``Dp``): the input's ``ifftshift`` is a factor ``(−1)^(nx+ny+nz)`` on the plain inverse transform's output
    ``n``, and the output's ``fftshift`` plus the central crop reads output index ``n = (i − Dp/2) mod Dp``."""
    padded = volume_ft.shape[-1]
    if padded % 2:
        return crop_volume(ifft3_centered(volume_ft).real, size)
    lo = padded // 2 - size // 2
    n = (torch.arange(lo, lo + size, device=volume_ft.device) - padded // 2) % padded
    y = torch.fft.ifftn(volume_ft, dim=(-3, -2, -1)).real
    y = y.index_select(-3, n).index_select(-2, n).index_select(-1, n)
    sign = (1 - 2 * (n % 2)).to(y.dtype)
    return y * (sign[:, None, None] * sign[None, :, None] * sign[None, None, :])


def volume_from_ft(volume_ft: torch.Tensor, size: int, gridding_correction: bool = True) -> torch.Tensor:
    """Oversampled centered transform ``(Dp, Dp, Dp)`` → real ``(D, D, D)`` volume (inverse
    transform, central crop, and division by the trilinear :func:`gridding_kernel`)."""
    padded = volume_ft.shape[-1]
    vol = _real_centre_of_ifft(volume_ft, size)
    if gridding_correction:
        vol = vol / gridding_kernel(size, padded, device=vol.device, dtype=vol.dtype)
    return vol

"""The ``kx ≥ 0`` half of an oversampled Fourier grid: insertion, completion and the inverse transform.

The transform of a real volume has ``F(−k) = conj F(k)``, so half of it holds all of it: ``(Dp, Dp, Dp/2+1)``
values ``[z, y, x]``, ``z`` and ``y`` centred (index ``i`` ↔ ``k = i − Dp/2``, docs/CONVENTIONS.md "Fourier
transforms") and ``x = kx`` (``0 … Dp/2``, the last axis of ``rfftn``; inside this module and the accumulator
that uses it). A slice pixel whose rotated frequency ``p`` has ``kx < 0`` is inserted at its Friedel mate ``−p``
with its value conjugated (as RELION's back-projector does); :func:`finish_half` then adds the mirrored sums on
the planes that are their own mates (``kx = 0`` and ``kx = Dp/2``).
The result equals the ``kx ≥ 0`` part of :func:`~cryolens.imaging.slice.finish_staging` (``hermitian=True``) of the
full grid, in half the memory, and :func:`volume_from_half_ft` makes the map with ``irfftn``.

Staging layout (before :func:`finish_half`): ``(channels, (Dp+2)·(Dp+2)·(Dp/2+2))`` real, voxel ``[z][y][x]``
with ``z, y ∈ [0, Dp+1]`` (planes ``Dp`` and ``Dp+1`` wrap onto 0 and 1) and ``x ∈ [0, Dp/2+1]`` (the last plane
takes the zero-weight upper corners of frequencies at ``kx = Dp/2``); channels ``(re, im, weight)``.
"""

from __future__ import annotations

import functools

import torch

from . import native
from .grids import freq_grid_2d
from .slice import SCATTER_POINTS, _half_columns, _pixel_multiplicity, gridding_kernel


def half_staging_shape(padded: int) -> tuple[int, int, int]:
    """``(z, y, x)`` extent of a half staging grid: ``(Dp+2, Dp+2, Dp/2+2)``."""
    return padded + 2, padded + 2, padded // 2 + 2


def half_staging_grid(padded: int, channels: int = 3, device=None, dtype=torch.float32) -> torch.Tensor:
    """Zeroed ``(channels, (Dp+2)²·(Dp/2+2))`` half staging grid (module docstring) for an even ``Dp``."""
    if padded % 2:
        raise ValueError(f"half_staging_grid: the padded size must be even, not {padded}")
    z, y, x = half_staging_shape(padded)
    return torch.zeros(channels, z * y * x, device=device, dtype=dtype)


def _footing(rotations: torch.Tensor, freqs: torch.Tensor, padded: int, rdt: torch.dtype):
    """Lower corner (flat staging index ``(B, P)``), ``(x, y, z)`` offsets from it and the Friedel flip ``(B, P)`` of
    the slice frequencies ``freqs (P, 2)`` (cycles/px) along ``rotations (B, 3, 3)`` in the half grid."""
    f3 = torch.cat([freqs, torch.zeros_like(freqs[:, :1])], -1).to(rdt)
    pts = torch.einsum("pj,nij->npi", f3, rotations.to(rdt)) * padded  # (B, P, 3) in padded-grid units
    flip = pts[..., 0] < 0
    pts = torch.where(flip[..., None], -pts, pts)
    centre = torch.tensor([0, padded // 2, padded // 2], dtype=rdt, device=pts.device)
    top = torch.tensor([padded // 2, padded, padded], dtype=rdt, device=pts.device)
    pts = torch.minimum(torch.maximum(pts + centre, torch.zeros_like(top)), top)  # inside Nyquist: guards rounding
    base = torch.floor(pts)
    frac = (pts - base).unbind(-1)
    base = base.long()
    _, g, gx = half_staging_shape(padded)
    return (base[..., 2] * g + base[..., 1]) * gx + base[..., 0], frac, flip


def _add_at_corners(staging: torch.Tensor, footing, channels: list[torch.Tensor], padded: int) -> None:
    """Each ``(B, P)`` channel times the 8 trilinear weights added at its corners (one ``index_add_`` per corner
    and channel)."""
    flat, (fx, fy, fz), _ = footing
    _, g, gx = half_staging_shape(padded)
    for dz in (0, 1):
        wz = fz if dz else 1 - fz
        for dy in (0, 1):
            wzy = wz * (fy if dy else 1 - fy)
            for dx in (0, 1):
                w = (wzy * (fx if dx else 1 - fx)).reshape(-1)
                idx = (flat + ((dz * g + dy) * gx + dx)).reshape(-1)
                for c, v in enumerate(channels):
                    staging[c].index_add_(0, idx, v.reshape(-1) * w)


def _channels(values: torch.Tensor, weights: torch.Tensor, m: torch.Tensor, flip: torch.Tensor,
              rdt: torch.dtype) -> list[torch.Tensor]:
    """``(re, ±im, weight)`` times the pixel multiplicity ``m``; the imaginary part negated where flipped."""
    sign = 1 - 2 * flip.to(rdt)
    return [values.real.to(rdt) * m, values.imag.to(rdt) * m * sign, weights.to(rdt) * m]


def scatter_half_points(stagings: list[torch.Tensor], values: list[torch.Tensor], weights: list[torch.Tensor],
                        rotations: torch.Tensor, freqs: torch.Tensor, multiplicity: torch.Tensor, padded: int) -> None:
    """In place, pure torch: add ``values (B, P)`` complex and ``weights (B, P)`` real at the slice frequencies
    ``freqs (P, 2)`` (cycles/px, ``(x, y)``) along ``rotations (B, 3, 3)``, each times ``multiplicity (P,)`` (and 0
    beyond Nyquist), into half staging grids — one per (values, weights) pair, the geometry computed once."""
    rdt = stagings[0].dtype
    footing = _footing(rotations, freqs, padded, rdt)
    m = multiplicity.to(rdt) * (freqs.norm(dim=-1) <= 0.5).to(rdt)
    for st, v, w in zip(stagings, values, weights, strict=True):
        _add_at_corners(st, footing, _channels(v, w, m, footing[2], rdt), padded)


def scatter_half(stagings: list[torch.Tensor], slices: list[torch.Tensor], rotations: torch.Tensor, padded: int,
                 weights: list[torch.Tensor | None], voxel_major: bool = False) -> None:
    """In place: insert the ``kx ≥ 0`` half columns of centred transforms of real images ``slices[k] (N, D, D)``
    complex (with ``weights[k] (N, D, D)`` real, None = 1) along ``rotations (N, 3, 3)`` (image → volume) into the
    half staging grids ``stagings[k]`` (``voxel_major``: laid out ``(voxels, 3)``, the compiled kernel only). The
    compiled kernel serves CPU grids; else torch, ``SCATTER_POINTS`` slice pixels at a time."""
    size = slices[0].shape[-1]
    mult, cols = _pixel_multiplicity(size, True, stagings[0].dtype, stagings[0].device)
    if voxel_major or all(native.usable(st, padded) for st in stagings):
        if not all(native.usable(st, padded) for st in stagings):
            raise ValueError("scatter_half: a voxel-major staging grid needs the compiled kernel on the CPU")
        for st, sl, wt in zip(stagings, slices, weights, strict=True):
            native.scatter(st, sl, rotations, padded, wt, cols, mult, voxel_major, half=True)
        return
    freqs = freq_grid_2d(size, device=rotations.device, dtype=stagings[0].dtype)[:, cols].reshape(-1, 2)
    step = max(1, SCATTER_POINTS // (size * cols.numel()))
    for a in range(0, rotations.shape[0], step):
        b = slice(a, a + step)
        vals = [sl[b][..., cols].flatten(1) for sl in slices]
        wts = [torch.ones_like(v.real) if wt is None else wt[b][..., cols].flatten(1) for v, wt in zip(vals, weights)]
        scatter_half_points(stagings, vals, wts, rotations[b], freqs, mult.reshape(-1), padded)


def mirror_yz(plane: torch.Tensor) -> torch.Tensor:
    """``plane[..., (Dp − z) mod Dp, (Dp − y) mod Dp, :]`` of ``(..., Dp, Dp, X)``: the ``(z, y)`` of ``−k``."""
    return torch.roll(torch.flip(plane, (-3, -2)), (1, 1), (-3, -2))


def finish_half(staging: torch.Tensor, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A half staging grid ``(3, …)`` (any strides a reshape can view) → ``(data (Dp, Dp, Dp/2+1) complex,
    weight (Dp, Dp, Dp/2+1) real)``: the ``z, y`` margins wrapped (the transform is periodic) and
    ``P(k) + conj P(−k)`` on the planes that are their own Friedel mates, ``x = 0`` and ``x = Dp/2``. The plane
    ``x = Dp/2 + 1`` only ever receives zero weights (a frequency inside Nyquist has ``|kx|·Dp ≤ Dp/2``) and is
    dropped. ``staging`` is left as it is."""
    g, _, gx = half_staging_shape(padded)
    st = staging.reshape(-1, g, g, gx)
    h = padded // 2 + 1
    weight = st.new_empty((padded, padded, h))
    data = st.new_empty((padded, padded, h), dtype=torch.complex128 if st.dtype == torch.float64 else torch.complex64)
    keep, wrap = (slice(0, padded), slice(0, padded)), (slice(0, 2), slice(padded, padded + 2))  # (to, from)
    for c, out in enumerate([*torch.view_as_real(data).unbind(-1), weight]):
        out.copy_(st[c, :padded, :padded, :h])
        for az in (keep, wrap):
            for ay in (keep, wrap):
                if az is not keep or ay is not keep:
                    out[az[0], ay[0]] += st[c, az[1], ay[1], :h]
        sign = -1.0 if c == 1 else 1.0  # the conjugate negates the imaginary channel only
        for x in (0, h - 1):
            out[..., x:x + 1] += sign * mirror_yz(out[..., x:x + 1])
    return data, weight


def half_to_full(half: torch.Tensor, conjugate: bool = True) -> torch.Tensor:
    """The centred full ``(Dp, Dp, Dp)`` grid of a Hermitian half grid ``(Dp, Dp, Dp/2+1)`` (complex data, or real
    weights with ``conjugate=False``): ``kx ≥ 0`` copied, ``kx < 0`` from ``conj half(−k)``."""
    padded = half.shape[-2]
    full = half.new_empty((padded, padded, padded))
    full[..., padded // 2:] = half[..., :padded // 2]
    full[..., 0] = half[..., padded // 2]
    mirror = torch.flip(mirror_yz(half[..., 1:padded // 2]), (-1,))
    full[..., 1:padded // 2] = mirror.conj() if conjugate and half.is_complex() else mirror
    return full


# planes per slab of the slab-wise passes below (their temporaries: a few MB at Dp = 256)
SLAB = 16


def _kept(padded: int, size: int) -> list[tuple[int, int]]:
    """The plain inverse transform's output indices ``n = (i − Dp/2) mod Dp`` of the centred crop ``i ∈ [Dp/2 −
    D/2, Dp/2 + D/2)``, as contiguous ranges: ``[0, D/2)`` and ``[Dp − D/2, Dp)`` (one range when ``Dp = D``)."""
    if padded == size:
        return [(0, padded)]
    return [(0, size // 2), (padded - size // 2, padded)]


def volume_from_half_ft(half_ft: torch.Tensor, size: int, gridding_correction: bool = True,
                        overwrite: bool = False) -> torch.Tensor:
    """Half transform ``(Dp, Dp, Dp/2+1)`` (module layout, Hermitian on its self-mated planes) → real ``(D, D, D)``
    map: the inverse FFT, central crop, division by the trilinear :func:`~cryolens.imaging.slice.gridding_kernel`.
    Equal to :func:`~cryolens.imaging.slice.volume_from_ft` of :func:`half_to_full`: the centred ``z, y`` input
    axes are a factor ``(−1)^(nz+ny)`` on the plain inverse transform's output ``n``, and the centred crop reads
    output index ``n = (i − Dp/2) mod Dp``. The axes are inverted one at a time — ``y`` in place, ``z`` in place
    on the ``D`` kept ``y`` rows only, then ``x`` (``irfft``) on the ``D × D`` kept rows — so that no second grid
    is made. overwrite: ``half_ft`` may be used as the work space (else a copy is)."""
    padded = half_ft.shape[-2]
    x = half_ft if overwrite else half_ft.clone()
    for z in range(0, padded, SLAB):
        x[z:z + SLAB] = torch.fft.ifft(x[z:z + SLAB], dim=-2)
    for lo, hi in _kept(padded, size):
        for y in range(lo, hi, SLAB):
            part = x[:, y:min(y + SLAB, hi)]
            part.copy_(torch.fft.ifft(part, dim=-3))
    n = torch.cat([torch.arange(lo, hi) for lo, hi in _kept(padded, size)]).to(half_ft.device)
    n = torch.roll(n, size // 2) if padded != size else (n - padded // 2) % padded  # crop order: i = lo … lo+D−1
    rows = x[n[:, None], n[None, :]]  # (D, D, Dp/2+1)
    del x
    vol = torch.fft.irfft(rows, n=padded, dim=-1).index_select(-1, n)
    sign = (1 - 2 * (n % 2)).to(vol.dtype)
    vol = vol * (sign[:, None, None] * sign[None, :, None])
    if gridding_correction:
        vol = vol / gridding_kernel(size, padded, device=vol.device, dtype=vol.dtype)
    return vol


@functools.lru_cache(maxsize=4)
def _shell_lookup(padded: int, pad: int) -> torch.Tensor:
    """``round(round(√r²) / pad)`` for every integer ``r² ≤ 3 (Dp/2)²`` (int64; ties to even, as torch rounds)."""
    r2 = torch.arange(3 * (padded // 2) ** 2 + 1, dtype=torch.float64)
    return torch.round(torch.round(r2.sqrt()) / pad).long()


def n_output_shells(padded: int, pad: int) -> int:
    """How many output shells the half grid's voxels fall in (corners beyond Nyquist included)."""
    return int(_shell_lookup(padded, pad)[-1]) + 1


def half_shells(padded: int, pad: int, z0: int, z1: int, device=None) -> torch.Tensor:
    """``(z1 − z0, Dp, Dp/2+1)`` int64 output shell ``round(round(|k|·Dp) / pad)`` of the half-grid planes
    ``z0 … z1−1`` (as :func:`~cryolens.imaging.grids.shell_index_3d` on the full grid, divided by ``pad`` and
    rounded), from a table over the integer ``|k|²``: made per slab, never as a whole grid."""
    c = (torch.arange(padded, dtype=torch.int64) - padded // 2) ** 2
    cx = torch.arange(padded // 2 + 1, dtype=torch.int64) ** 2
    r2 = c[z0:z1, None, None] + c[None, :, None] + cx[None, None, :]
    return _shell_lookup(padded, pad)[r2].to(device)


def half_plane_multiplicity(padded: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(Dp/2+1,)`` how many voxels of the full grid each ``x`` plane of the half grid stands for: 1 for
    ``kx = 0`` and ``kx = Dp/2`` (their own mates), 2 for the others (``k`` and ``−k``)."""
    m = torch.full((padded // 2 + 1,), 2.0, dtype=dtype, device=device)
    m[0] = m[-1] = 1.0
    return m


def half_column_products(images: torch.Tensor, shifts: torch.Tensor | None, ctf, pixel_size: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the insertion of real images reads, computed on their ``kx ≥ 0`` half columns only: the centred
    transforms of ``images (B, D, D)`` with ``shifts (B, 2)`` px undone (None: none) times the CTFs of ``ctf``
    (:class:`~cryolens.imaging.ctf.CTFParams` of ``B`` images, None: 1), and the CTFs squared. Returns
    ``(values, weights)`` ``(B, D, D)`` in the centred layout, zero outside the columns the half insertion
    reads (``−Nyquist`` and ``kx = 0 … D/2 − 1``; :func:`~cryolens.imaging.slice._half_columns`): on those columns
    equal to ``phase_shift(fft2_centered_real(images), −shifts) · ctf_2d`` and ``ctf_2d²`` (tested), in about
    half their work. CTFs in float64, cast to the images' dtype, as :func:`~cryolens.imaging.ctf.ctf_2d`."""
    from .ctf import ctf_from_freqs
    from .fft import rfft2_centered

    d = images.shape[-1]
    half = rfft2_centered(images)  # (B, D, D/2+1): rows centred, columns kx = 0 … D/2
    cols = _half_columns(d, images.device)  # −Nyquist, then kx = 0 … D/2 − 1
    src = torch.cat([torch.tensor([d // 2]), torch.arange(0, d // 2)]).to(images.device)  # −Nyquist ≡ +Nyquist
    data = half[..., src]  # (B, D, C) in the order of cols
    grid = freq_grid_2d(d, device=images.device, dtype=torch.float64)[:, cols]  # (D, C, 2) cycles/px (x, y)
    if shifts is not None:
        s = -shifts.to(device=images.device, dtype=images.dtype)
        f = grid.to(images.dtype)
        phase_x = -2 * torch.pi * f[0, :, 0][None] * s[:, :1]  # (B, C)
        phase_y = -2 * torch.pi * f[:, 0, 1][None] * s[:, 1:]  # (B, D)
        data = data * (torch.polar(torch.ones_like(phase_y), phase_y)[:, :, None]
                       * torch.polar(torch.ones_like(phase_x), phase_x)[:, None, :])
    if ctf is None:
        c = torch.ones(data.shape, dtype=images.dtype, device=images.device)
    else:
        c = ctf_from_freqs(grid / pixel_size, ctf.to(dtype=torch.float64)).to(images.dtype)
    values = torch.zeros(*data.shape[:-1], d, dtype=data.dtype, device=images.device)
    weights = torch.zeros(*data.shape[:-1], d, dtype=images.dtype, device=images.device)
    values[..., cols] = data * c
    weights[..., cols] = c * c
    return values, weights

"""A hierarchical grid on SO(3): HEALPix directions × in-plane angles (Hopf fibration).

The grid of Yershova et al. (2010), as used by cryoDRGN's ``so3_grid`` and, in Euler-angle
form, by RELION: at level ``L``

- directions: the ``n_pix = 12 · 4^L`` HEALPix pixel centres for ``Nside = 2^L`` in the NESTED
  scheme (Górski et al. 2005), so that the 4 children of pixel ``p`` at level ``L + 1`` are
  ``4p, 4p+1, 4p+2, 4p+3``;
- in-plane angles: ``n_psi = 6 · 2^L`` bin centres ``ψ_j = (j + ½) · 2π / n_psi``, so that the
  2 children of ``j`` are ``2j, 2j+1`` (at ``ψ_j ∓ π / (2 n_psi)``).

Grid point ``index = pix · n_psi + j``; there are ``72 · 8^L`` of them (72, 576, 4 608, 36 864, ...).
Its rotation (image frame → volume frame, as everywhere in cryolens) is

    R = euler_to_matrix(rot=φ, tilt=θ, psi=ψ_j − k_f · φ)      (= Rz(φ) Ry(θ) Rz(ψ_j − k_f φ))

with ``(θ, φ)`` the HEALPix pixel centre (colatitude, longitude; radians) and ``k_f`` fixed by
the pixel's HEALPix base face ``f = pix // Nside²``: ``k_f = +1`` for the north faces 0–3, ``0``
for the equatorial faces 4–7, ``−1`` for the south faces 8–11. So the projection direction
``R · ẑ = (sin θ cos φ, sin θ sin φ, cos θ)`` is the HEALPix direction, and ``ψ_j`` is the in-plane
angle relative to a frame that is carried over the sphere without twist near the poles.

Why ``k_f``: with plain ZYZ angles (``k = 0`` everywhere) a change ``Δφ`` of longitude at fixed
``θ, ψ`` is a rotation by ``Δφ`` however close to a pole the points are, so a pixel near a pole and
its children (whose longitudes differ by up to 22.5° at every level) would be far apart on SO(3)
and a coarse-to-fine search would lose its way there. With ``k_f`` the frame's twist per ``Δφ`` is
``(cos θ − k_f) Δφ``, at most ``|Δφ|`` where the face is narrow in φ. ``k_f`` is constant on a base
face, and every pixel's children lie in its face, so parents and children share one frame: the
8 children of a grid point are within ``angular_step(level)`` of it (tested). Between faces the
frame jumps, which only renumbers the in-plane angles there; distances (and so :func:`nearest`,
:func:`local_grid`) are computed on the rotations themselves and do not depend on the frame.

All angles are radians except :func:`angular_step`, which returns degrees (a size for humans).
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from .rotations import euler_to_matrix, geodesic_distance

# HEALPix base faces: ring offset (in units of Nside) and longitude offset (in units of π/4)
# of each of the 12 base pixels (Górski et al. 2005; healpy's pix2ang_nest tables).
_JRLL = (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)
_JPLL = (1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7)


def _check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise InputError(f"so3_grid: level must be an integer >= 0, got {level!r}")
    return level


def n_pixels(level: int) -> int:
    """Number of HEALPix directions at ``level``: ``12 · 4^level``."""
    return 12 * 4 ** _check_level(level)


def n_psi(level: int) -> int:
    """Number of in-plane angles at ``level``: ``6 · 2^level``."""
    return 6 * 2 ** _check_level(level)


def grid_size(level: int) -> int:
    """Number of grid points at ``level``: ``n_pixels · n_psi = 72 · 8^level``."""
    return n_pixels(level) * n_psi(level)


def angular_step(level: int) -> float:
    """Grid spacing at ``level`` in **degrees**: the larger of the direction spacing
    ``sqrt(4π / n_pixels)`` and the in-plane spacing ``2π / n_psi``, i.e. ``60° / 2^level``.

    Measured (see the tests): the nearest grid point of a random rotation is within 0.8–0.87 × this
    angle (0.47 × on average), and the 8 children of a grid point within 0.48–0.73 × (levels 0–8)."""
    step = max(math.sqrt(4 * math.pi / n_pixels(level)), 2 * math.pi / n_psi(level))
    return math.degrees(step)


def _compact_even_bits(v: torch.Tensor, nbits: int) -> torch.Tensor:
    """Bits 0, 2, 4, ... of ``v`` packed into bits 0, 1, 2, ... (de-interleave a Morton code)."""
    out = torch.zeros_like(v)
    for b in range(nbits):
        out |= ((v >> (2 * b)) & 1) << b
    return out


def healpix_pix2ang(nside: int, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of HEALPix pixels in the NESTED scheme (as ``healpy.pix2ang(nside, pix, nest=True)``).

    ``nside``: a power of two. ``pix``: integer tensor of any shape, values in ``[0, 12 nside²)``.
    Returns ``(theta, phi)``, float64 tensors of ``pix``'s shape and device: colatitude
    ``θ ∈ [0, π]`` (from +z) and longitude ``φ ∈ [0, 2π)`` (from +x towards +y), radians.
    """
    if isinstance(nside, bool) or not isinstance(nside, int) or nside < 1 or nside & (nside - 1):
        raise InputError(f"healpix_pix2ang: nside must be a power of two >= 1, got {nside!r}")
    pix = torch.as_tensor(pix)
    if pix.dtype.is_floating_point or pix.dtype.is_complex or pix.dtype == torch.bool:
        raise InputError(f"healpix_pix2ang: pixel indices must be integers, got {pix.dtype}")
    pix = pix.to(torch.int64)
    dev = pix.device
    npface = nside * nside
    face = torch.div(pix, npface, rounding_mode="floor")
    ipf = pix - face * npface
    # position (ix, iy) of the pixel inside its base face: the nested index is their Morton code
    nbits = nside.bit_length() - 1
    ix = _compact_even_bits(ipf, nbits)
    iy = _compact_even_bits(ipf >> 1, nbits)
    jrll = torch.tensor(_JRLL, dtype=torch.int64, device=dev)[face]
    jpll = torch.tensor(_JPLL, dtype=torch.int64, device=dev)[face]
    jr = jrll * nside - ix - iy - 1  # ring number, 1 (north) .. 4 nside − 1 (south)
    north = jr < nside
    south = jr > 3 * nside
    cap = north | south
    nr = torch.where(north, jr, torch.where(south, 4 * nside - jr, torch.full_like(jr, nside)))
    kshift = torch.where(cap, torch.zeros_like(jr), (jr - nside) & 1)
    # colatitude: polar caps have 1 − |z| = nr² / (3 nside²), i.e. sin(θ/2) = nr / (√6 nside);
    # the equatorial belt has z = (2 nside − jr) · 2 / (3 nside)
    nrf = nr.to(torch.float64)
    theta_cap = 2 * torch.asin(nrf / (math.sqrt(6.0) * nside))
    z_eq = (2 * nside - jr).to(torch.float64) * (2.0 / (3.0 * nside))
    theta = torch.where(north, theta_cap, torch.where(south, math.pi - theta_cap, torch.acos(z_eq)))
    # longitude: index jp (1 .. 4 nr) along the ring; the numerator is always even
    jp = torch.div(jpll * nr + ix - iy + 1 + kshift, 2, rounding_mode="floor")
    nl4 = 4 * nside
    jp = torch.where(jp > nl4, jp - nl4, jp)
    jp = torch.where(jp < 1, jp + nl4, jp)
    phi = (jp.to(torch.float64) - (kshift.to(torch.float64) + 1) * 0.5) * (math.pi / 2) / nrf
    return theta, phi


def _split(level: int, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    npsi = n_psi(level)
    indices = torch.as_tensor(indices)
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise InputError(f"so3_grid: grid indices must be integers, got {indices.dtype}")
    indices = indices.to(torch.int64)
    pix = torch.div(indices, npsi, rounding_mode="floor")
    return pix, indices - pix * npsi


def _face_twist(level: int, pix: torch.Tensor) -> torch.Tensor:
    """``k_f``: +1 on north base faces, 0 on equatorial ones, −1 on south ones (int64)."""
    face = torch.div(pix, 4**level, rounding_mode="floor")
    return 1 - torch.div(face, 4, rounding_mode="floor")


def _section(level: int, pix: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` float64 frames ``Rz(φ) Ry(θ) Rz(−k_f φ)`` of HEALPix pixels ``pix``: the grid
    rotation of ``(pix, j)`` is ``frame · Rz(ψ_j)``."""
    theta, phi = healpix_pix2ang(2**level, pix)
    k = _face_twist(level, pix).to(torch.float64)
    return euler_to_matrix(phi, theta, -k * phi)


def _psi_values(level: int, j: torch.Tensor) -> torch.Tensor:
    return (j.to(torch.float64) + 0.5) * (2 * math.pi / n_psi(level))


def grid_euler(level: int, indices: torch.Tensor | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RELION Euler angles ``(rot, tilt, psi)`` (radians) of grid points at ``level``.

    ``indices``: integer tensor (any shape) of grid indices; default all ``grid_size(level)`` in
    order (then on ``device``). Returns three tensors of ``indices``' shape: ``rot = φ ∈ [0, 2π)``,
    ``tilt = θ ∈ [0, π]``, ``psi = (ψ_j − k_f φ) mod 2π``, so that
    ``euler_to_matrix(rot, tilt, psi)`` equals :func:`so3_grid` (module docstring).
    """
    if indices is None:
        indices = torch.arange(grid_size(level), device=device)
    pix, j = _split(level, indices)
    theta, phi = healpix_pix2ang(2**level, pix)
    k = _face_twist(level, pix).to(torch.float64)
    psi = torch.remainder(_psi_values(level, j) - k * phi, 2 * math.pi)
    return phi.to(dtype), theta.to(dtype), psi.to(dtype)


def so3_grid(level: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             *, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Rotations (image frame → volume frame) of the SO(3) grid at ``level``.

    Without ``indices``: ``(grid_size(level), 3, 3)`` on ``device``, row ``index = pix · n_psi + j``.
    With ``indices`` (integer tensor, any shape ``S``): ``(*S, 3, 3)`` on ``indices``' device — the
    rotations of just those points (for coarse-to-fine searches that never build a fine grid).
    Computed in float64, returned in ``dtype``. ``R · ẑ`` is the HEALPix direction of ``pix``.
    """
    if indices is not None:
        pix, j = _split(level, indices)
        return (_section(level, pix) @ _rz64(_psi_values(level, j))).to(dtype)
    pix = torch.arange(n_pixels(level), device=device)
    j = torch.arange(n_psi(level), device=device)
    frames = _section(level, pix)  # (n_pix, 3, 3)
    inplane = _rz64(_psi_values(level, j))  # (n_psi, 3, 3)
    out = frames[:, None] @ inplane[None]  # (n_pix, n_psi, 3, 3)
    return out.reshape(-1, 3, 3).to(dtype)


def _rz64(a: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(a)
    return euler_to_matrix(z, z, a)


def children(level: int, indices: torch.Tensor) -> torch.Tensor:
    """Grid indices at ``level + 1`` of the 8 children of grid points ``indices`` (shape ``(K,)``,
    or any shape ``S``) at ``level``: ``(K, 8)`` (``(*S, 8)``), int64, on ``indices``' device.

    Child ``4c + b`` is HEALPix sub-pixel ``4 pix + c`` (NESTED) with in-plane angle ``2 j + b``."""
    pix, j = _split(level, indices)
    npsi_next = n_psi(level + 1)
    c = torch.arange(4, device=pix.device)
    b = torch.arange(2, device=pix.device)
    child_pix = 4 * pix[..., None, None] + c[:, None]  # (..., 4, 1)
    child_j = 2 * j[..., None, None] + b  # (..., 1, 2)
    return (child_pix * npsi_next + child_j).reshape(*pix.shape, 8)


def parent(level: int, indices: torch.Tensor) -> torch.Tensor:
    """Grid index at ``level − 1`` (``level ≥ 1``) of the parent of grid points ``indices`` at
    ``level``; same shape and device, int64. Inverse of :func:`children`."""
    if _check_level(level) < 1:
        raise InputError(f"so3_grid: level 0 points have no parent (level={level})")
    pix, j = _split(level, indices)
    return torch.div(pix, 4, rounding_mode="floor") * n_psi(level - 1) + torch.div(j, 2, rounding_mode="floor")


def _check_rotations(rotations: torch.Tensor) -> torch.Tensor:
    if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
        raise InputError(f"so3_grid: rotations must have shape (B, 3, 3), got {tuple(rotations.shape)}")
    return rotations


def nearest(rotations: torch.Tensor, level: int, k: int = 1,
            chunk: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` grid points at ``level`` nearest (geodesic angle) to each of ``rotations``.

    ``rotations``: ``(B, 3, 3)``, image → volume frame, any device. Returns ``(indices, angles)``,
    both ``(B, k)`` sorted nearest first: int64 grid indices and float64 angles in radians.
    Exhaustive (``tr(Rᵀ G) = 1 + 2 cos angle`` as one matrix product per chunk of ``chunk`` / B grid
    points), so meant for tests and coarse levels; fine levels use :func:`local_grid`.
    """
    rotations = _check_rotations(rotations)
    m = grid_size(level)
    if not 1 <= k <= m:
        raise InputError(f"so3_grid: k must be in [1, {m}] at level {level}, got {k}")
    b = rotations.shape[0]
    dev = rotations.device
    flat = rotations.to(torch.float64).reshape(b, 9)
    best_tr = torch.full((b, 0), -math.inf, dtype=torch.float64, device=dev)
    best_idx = torch.zeros((b, 0), dtype=torch.int64, device=dev)
    step = max(k, chunk // max(b, 1))
    for start in range(0, m, step):
        idx = torch.arange(start, min(m, start + step), device=dev)
        g = so3_grid(level, dtype=torch.float64, indices=idx).reshape(-1, 9)
        tr = flat @ g.T  # (B, chunk) = trace(Rᵀ G)
        top = tr.topk(min(k, idx.numel()), dim=1)
        best_tr = torch.cat([best_tr, top.values], 1)
        best_idx = torch.cat([best_idx, idx[top.indices]], 1)
        keep = best_tr.topk(min(k, best_tr.shape[1]), dim=1).indices
        best_tr, best_idx = best_tr.gather(1, keep), best_idx.gather(1, keep)
    # exact angles (atan2 form) of the winners, re-sorted
    angles = geodesic_distance(rotations.to(torch.float64)[:, None],
                               so3_grid(level, dtype=torch.float64, indices=best_idx))
    order = angles.argsort(dim=1, stable=True)
    return best_idx.gather(1, order), angles.gather(1, order)


def local_grid(rotations: torch.Tensor, level: int, max_angle: float,
               chunk: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """All grid points at ``level`` within ``max_angle`` (radians, geodesic) of each rotation —
    the candidate set of a RELION-style local search.

    ``rotations``: ``(B, 3, 3)``, image → volume frame, any device. Returns ``(batch, index)``, two
    1-D int64 tensors of equal length on that device (a sparse ``(B, grid_size)`` mask, like
    ``nonzero()``), sorted by ``batch`` then ``index``: grid point ``index[i]`` is within
    ``max_angle`` of ``rotations[batch[i]]`` (boundary ties within ~1e-9 rad either way).

    Cost grows with the number of hits, not the grid: directions are filtered first (the angle
    between ``R ẑ`` and ``G ẑ`` never exceeds the geodesic angle between ``R`` and ``G``), then for
    each direction the in-plane angles within reach follow in closed form, since
    ``tr(Rᵀ F Rz(ψ)) = ρ cos(ψ − ψ*) + a₂₂`` for a frame ``F``.
    """
    rotations = _check_rotations(rotations)
    max_angle = float(max_angle)
    dev = rotations.device
    b = rotations.shape[0]
    npix, npsi = n_pixels(level), n_psi(level)
    dpsi = 2 * math.pi / npsi
    if max_angle < 0 or b == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty.clone()
    pix_all = torch.arange(npix, device=dev)
    frames = _section(level, pix_all)  # (npix, 3, 3)
    dirs = frames[:, :, 2]  # (npix, 3) = F ẑ
    rot64 = rotations.to(torch.float64)
    view = rot64[:, :, 2]  # (B, 3) = R ẑ
    cos_max = math.cos(min(max_angle, math.pi))
    out_b, out_i = [], []
    rows = max(1, chunk // npix)
    for s in range(0, b, rows):
        cand = (view[s:s + rows] @ dirs.T) >= cos_max - 1e-9  # (rows, npix)
        bb, pp = cand.nonzero(as_tuple=True)
        bb = bb + s
        a = rot64[bb].transpose(-1, -2) @ frames[pp]  # (P, 3, 3) = Rᵀ F
        rho = torch.hypot(a[:, 0, 0] + a[:, 1, 1], a[:, 0, 1] - a[:, 1, 0])
        psi_star = torch.atan2(a[:, 0, 1] - a[:, 1, 0], a[:, 0, 0] + a[:, 1, 1])
        # within reach ⟺ ρ cos(ψ − ψ*) + a22 ≥ 1 + 2 cos(max_angle)
        c = (1 + 2 * cos_max - a[:, 2, 2]) / rho.clamp_min(1e-300) - 1e-9
        half = torch.acos(c.clamp(-1.0, 1.0))
        lo = torch.ceil((psi_star - half) / dpsi - 0.5 - 1e-9).to(torch.int64)
        hi = torch.floor((psi_star + half) / dpsi - 0.5 + 1e-9).to(torch.int64)
        count = (hi - lo + 1).clamp(0, npsi)
        count = torch.where(c > 1, torch.zeros_like(count), count)
        every = c <= -1
        count = torch.where(every, torch.full_like(count, npsi), count)
        lo = torch.where(every, torch.zeros_like(lo), lo)
        total = int(count.sum())
        if total == 0:
            continue
        pair = torch.repeat_interleave(torch.arange(count.numel(), device=dev), count)
        offset = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        j = torch.remainder(lo[pair] + offset, npsi)
        out_b.append(bb[pair])
        out_i.append(pp[pair] * npsi + j)
    if not out_b:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty.clone()
    bat, idx = torch.cat(out_b), torch.cat(out_i)
    order = torch.argsort(bat * grid_size(level) + idx)
    return bat[order], idx[order]

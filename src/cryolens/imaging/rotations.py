"""Rotations: matrices, RELION Euler angles, quaternions, rotation vectors, uniform sampling.

A rotation matrix ``R`` maps image-frame (slice) coordinates into the volume frame:
``image(x, y) = ∫ V(R · [x, y, z]ᵀ) dz``. Angles are radians inside the code.

RELION angles ``(rot, tilt, psi)`` give ``R = Rz(rot) · Ry(tilt) · Rz(psi)`` (intrinsic ZYZ,
scipy's ``Rotation.from_euler("ZYZ", ...)``); RELION's own matrix ``A`` is ``Rᵀ``.
cryoSPARC poses are rotation vectors (axis · angle, radians) of ``R``.
Quaternions are ``(w, x, y, z)``, scalar first. The continuous "S2S2" / 6D representation of
cryoAI and Zhou et al. 2019 is the pair of the first two columns of ``R`` (the image ``x`` and ``y`` axes
in the volume frame), made orthonormal by Gram–Schmidt.
"""

from __future__ import annotations

import math

import torch


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*a.shape, 3, 3)


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*a.shape, 3, 3)


def euler_to_matrix(rot: torch.Tensor, tilt: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles (radians, shape ``(...)``) → ``(..., 3, 3)`` rotations
    ``R = Rz(rot) Ry(tilt) Rz(psi)`` (image frame → volume frame)."""
    return _rz(rot) @ _ry(tilt) @ _rz(psi)


def matrix_to_euler(r: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_to_matrix`: ``(..., 3, 3)`` → ``(rot, tilt, psi)`` radians,
    ``tilt ∈ [0, π]``; at ``tilt ∈ {0, π}`` (gimbal lock) ``psi = 0``."""
    r = r.to(torch.float64) if r.dtype == torch.float64 else r
    tilt = torch.acos(r[..., 2, 2].clamp(-1, 1))
    sin_t = torch.sqrt(r[..., 0, 2] ** 2 + r[..., 1, 2] ** 2)
    rot = torch.atan2(r[..., 1, 2], r[..., 0, 2])
    psi = torch.atan2(r[..., 2, 1], -r[..., 2, 0])
    lock = sin_t < eps
    up = r[..., 2, 2] > 0
    rot_lock = torch.where(up, torch.atan2(r[..., 1, 0], r[..., 0, 0]), torch.atan2(-r[..., 1, 0], -r[..., 0, 0]))
    rot = torch.where(lock, rot_lock, rot)
    psi = torch.where(lock, torch.zeros_like(psi), psi)
    return rot, tilt, psi


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` as ``(w, x, y, z)`` → ``(..., 3, 3)``; q and −q give the same R."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    m = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(m, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` rotations → unit quaternions ``(..., 4)`` ``(w, x, y, z)`` with ``w ≥ 0``."""
    m = r
    t = [
        1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
        1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
    ]
    # four candidate solutions (Shepperd); keep the best-conditioned one per rotation
    cands = torch.stack([
        torch.stack([t[0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], t[1], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], t[2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], t[3]], -1),
    ], dim=-2)
    best = torch.stack(t, -1).argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def rotvec_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` (axis × angle, radians; cryoSPARC) → ``(..., 3, 3)``."""
    angle = v.norm(dim=-1, keepdim=True)
    half = angle / 2
    # sin(θ/2)/θ, with its limit 1/2 at θ → 0
    scale = torch.where(angle > 1e-8, torch.sin(half) / angle.clamp_min(1e-12), 0.5 - angle**2 / 48)
    q = torch.cat([torch.cos(half), v * scale], dim=-1)
    return quaternion_to_matrix(q)


def matrix_to_rotvec(r: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` rotations → rotation vectors ``(..., 3)`` with angle in ``[0, π]``."""
    q = matrix_to_quaternion(r)
    w, xyz = q[..., :1], q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(s > 1e-8, angle / s.clamp_min(1e-12), 2.0 + 0 * s)
    return xyz * scale


def random_rotations(n: int, generator: torch.Generator | None = None, device=None,
                     dtype=torch.float32) -> torch.Tensor:
    """``(n, 3, 3)`` rotations drawn uniformly (Haar measure) on SO(3)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return quaternion_to_matrix(q).to(device=device, dtype=dtype)


def geodesic_distance(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Angle (radians, ``[0, π]``) of ``r1ᵀ r2`` for ``(..., 3, 3)`` rotation batches."""
    tr = (r1.transpose(-1, -2) @ r2).diagonal(dim1=-2, dim2=-1).sum(-1)
    # acos is ill-conditioned near 0; use atan2 of the sine and cosine parts
    rel = r1.transpose(-1, -2) @ r2
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], -1)
    return torch.atan2(skew.norm(dim=-1) / 2, (tr - 1) / 2)


def weighted_mean_rotation(rotations: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor,
                           n_groups: int) -> torch.Tensor:
    """Chordal L2 mean of weighted rotations per group: for each group ``g`` the rotation nearest (in
    Frobenius norm) to ``Σ_i w_i R_i`` over ``groups == g`` — its SVD ``U S Vᵀ`` projected to
    ``U diag(1, 1, det UVᵀ) Vᵀ``. rotations: ``(P, 3, 3)``; weights: ``(P,)`` ≥ 0; groups: ``(P,)``
    int64 in ``[0, n_groups)``. Returns ``(n_groups, 3, 3)`` (the identity for an empty group). For
    rotations within a few degrees of each other it equals the weighted geodesic mean to second order."""
    m = torch.zeros(n_groups, 3, 3, dtype=rotations.dtype, device=rotations.device)
    m.index_add_(0, groups, weights.to(rotations.dtype)[:, None, None] * rotations)
    empty = m.flatten(1).abs().sum(1) == 0
    m[empty] = torch.eye(3, dtype=m.dtype, device=m.device)
    return nearest_rotation(m)


def nearest_rotation(m: torch.Tensor) -> torch.Tensor:
    """The proper rotation nearest in Frobenius norm to each matrix of ``m (..., 3, 3)``: with the SVD
    ``m = U S Vᵀ``, ``U diag(1, 1, det UVᵀ) Vᵀ`` (reflections excluded)."""
    u, _, vh = torch.linalg.svd(m)
    d = torch.ones(m.shape[:-1], dtype=m.dtype, device=m.device)
    d[..., 2] = torch.where(torch.linalg.det(u @ vh) < 0, -1.0, 1.0)
    return (u * d[..., None, :]) @ vh


def rigid_fit(mobile: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kabsch: the proper rotation ``R`` and translation ``t`` minimising ``Σ_i w_i |R x_i + t − y_i|²`` for
    each batch row. mobile ``x``: ``(..., N, 3)``; target ``y``: ``(N, 3)`` or ``(..., N, 3)``; weights
    ``(N,)`` ≥ 0 (default equal). Returns ``(R (..., 3, 3), t (..., 3))``; apply as ``x @ Rᵀ + t``.
    Differentiable where the cross-covariance's singular values are distinct."""
    w = torch.ones(mobile.shape[-2], dtype=mobile.dtype, device=mobile.device) if weights is None \
        else weights.to(mobile)
    w = w / w.sum()
    target = target.to(mobile)
    cx = (w[:, None] * mobile).sum(-2)
    cy = (w[:, None] * target).sum(-2)
    m = ((target - cy[..., None, :]) * w[:, None]).transpose(-1, -2) @ (mobile - cx[..., None, :])
    r = nearest_rotation(m)
    return r, cy - (r @ cx[..., None])[..., 0]


def moved_poses(rotations: torch.Tensor, shifts: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                pixel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The poses that give the same images after the volume is moved rigidly, ``x ↦ Q x + c``.

    With ``image(r) = ∫ V(R [r, z]ᵀ) dz`` at ``r − s`` (a particle centred at ``s`` px) and the moved volume
    ``V'(Q x + c) = V(x)``: ``V(R p) = V'(R' (p + R'ᵀ c))`` with ``R' = Q R``, so the image is ``V'``'s
    projection at ``R'`` centred at ``s' = s − (R'ᵀ c)_{xy} / pixel_size``. rotations ``R``: ``(N, 3, 3)``
    (image → volume frame); shifts ``s``: ``(N, 2)`` px; rotation ``Q``: ``(3, 3)`` or ``(N, 3, 3)``;
    translation ``c``: ``(3,)`` or ``(N, 3)`` Å ``(x, y, z)``. Returns ``(R' (N, 3, 3), s' (N, 2) px)``."""
    new = rotation.to(rotations) @ rotations
    moved = (new.transpose(-1, -2) @ translation.to(rotations).expand(len(rotations), 3)[..., None])[..., 0]
    return new, shifts.to(rotations) - moved[:, :2] / float(pixel_size)


def inplane_rotation(angle: torch.Tensor) -> torch.Tensor:
    """Rotation by ``angle`` (radians) about the z (beam) axis, ``(..., 3, 3)``."""
    return _rz(angle)


def s2s2_to_matrix(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The continuous 6D ("S2S2") representation ``v (..., 6)`` → proper rotations ``(..., 3, 3)``.

    ``v = (a, b)`` with ``a = v[..., :3]``, ``b = v[..., 3:]`` any two non-parallel 3-vectors (an encoder's
    raw output). Gram–Schmidt: ``e₁ = a/|a|``, ``e₂ = (b − (e₁·b) e₁)/|…|``, ``e₃ = e₁ × e₂``, and
    ``R = [e₁ e₂ e₃]`` as **columns**: ``e₁ = R x̂`` and ``e₂ = R ŷ`` are the image-frame axes in the volume
    frame (docs/CONVENTIONS.md: ``R`` maps image → volume frame). ``det R = +1`` by construction; differentiable
    wherever ``a`` and ``b`` are not parallel (``eps`` guards the norms)."""
    a, b = v[..., :3], v[..., 3:6]
    e1 = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b - (e1 * b).sum(-1, keepdim=True) * e1
    e2 = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def matrix_to_s2s2(r: torch.Tensor) -> torch.Tensor:
    """Rotations ``(..., 3, 3)`` → their 6D representation ``(..., 6)``: the first two columns
    ``(R x̂, R ŷ)`` concatenated; :func:`s2s2_to_matrix` inverts it exactly."""
    return torch.cat([r[..., :, 0], r[..., :, 1]], dim=-1)


def inplane_pi_pose(rotations: torch.Tensor, shifts: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The pose of an image rotated in-plane by π about its centre: ``(R · Rz(π), −t)``.

    With ``image(x, y) = ∫ V(R [x, y, z]ᵀ) dz``, ``R Rz(π) [x, y, z]ᵀ = R [−x, −y, z]ᵀ``, so projecting with
    ``R Rz(π)`` gives ``image(−x, −y)``: the π-rotated image (:func:`~cryolens.imaging.grids.flip_centered`
    on its last two axes); the particle centre ``t`` (px) moves to ``−t``. The CTF is even in ``k``, so it
    is unchanged. rotations: ``(..., 3, 3)``; shifts: ``(..., 2)`` px or ``None``. Returns new tensors."""
    rz = torch.tensor([-1.0, -1.0, 1.0], dtype=rotations.dtype, device=rotations.device)
    return rotations * rz, (None if shifts is None else -shifts)


def degrees(x: torch.Tensor) -> torch.Tensor:
    """Radians → degrees (for file and CLI boundaries)."""
    return x * (180.0 / math.pi)


def radians(x: torch.Tensor) -> torch.Tensor:
    """Degrees → radians (for file and CLI boundaries)."""
    return x * (math.pi / 180.0)

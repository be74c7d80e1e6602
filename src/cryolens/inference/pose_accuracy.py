"""How well the data pin each image's pose down, and how much of it a local search window holds: the
quantities auto-refine's schedule follows (:mod:`~cryolens.inference.autorefine`) and its per-iteration
pose diagnostic (docs/METHODS.md, "Auto-refine: sampling that follows the pose accuracy").

**Expected angular accuracy** (:func:`expected_angular_accuracy`, RELION's ``acc_rot``): for an image
whose pose is ``R`` and whose CTF is ``C``, the noise-free image is ``C·P_R``; turning the pose by an angle
``δ`` about an axis ``a`` lowers its log-likelihood (:mod:`~cryolens.inference.likelihood`, weights
``1 / (2σ²(k))`` on the shells ``≤ k``) by

    ``Δ(δ) = Σ_pixels C² |P_R − P_{R·exp(δ a)}|² / (2σ²(k))``,

the expected drop for a noisy image at its true pose. The accuracy is the smallest ``δ`` with
``Δ(δ) ≥ 1`` (one unit of log-likelihood, RELION's criterion in ``calculateExpectedAngularErrors``),
found on a geometric ladder of trial angles and interpolated linearly between the two rungs that bracket
the crossing; an image whose drop never reaches 1 gets the largest trial angle. Where ``Δ`` is quadratic,
``Δ = δ²/δ₁²``, the posterior of the angle about ``a`` is Gaussian with standard deviation ``δ₁ / √2``.

**Window mass** (:func:`window_mass`): given per-candidate log-likelihoods (uniform prior, shifts
already marginalised) of a neighbourhood wider than the search window and each candidate's angle from the
window's centre, the fraction of the posterior mass inside the window's radius;
(:func:`posterior_rms_angle`) the posterior's RMS angle about its mode. A window that holds much less than
all the mass truncates the posterior.
"""

from __future__ import annotations

import math

import torch

from ..imaging.rotations import geodesic_distance, rotvec_to_matrix
from ..imaging.so3_grid import grid_size
from .likelihood import log_likelihood_table, prepare_image_terms


def trial_angles(max_deg: float = 30.0, n: int = 24, min_deg: float = 0.05) -> torch.Tensor:
    """``(n,)`` float64 degrees: the geometric ladder ``min_deg … max_deg`` of trial angles."""
    return torch.logspace(math.log10(min_deg), math.log10(max_deg), n, dtype=torch.float64)


def first_crossing(angles: torch.Tensor, drop: torch.Tensor, level: float = 1.0) -> torch.Tensor:
    """``(B,)``: per row of ``drop (B, n)`` (values at the increasing ``angles (n,)``), the first angle at
    which ``drop ≥ level``, linearly interpolated between the rung before and the rung reaching it (from
    0 at angle 0 when the first rung already reaches it); ``angles[-1]`` when no rung reaches it."""
    a = angles.to(drop.dtype).to(drop.device)
    above = drop >= level
    never = torch.full_like(above[:, 0], a.numel(), dtype=torch.long)
    first = torch.where(above.any(1), above.float().argmax(1), never)
    hit = first < a.numel()
    j = first.clamp(max=a.numel() - 1)
    a1, d1 = a[j], drop.gather(1, j[:, None])[:, 0]
    a0 = torch.where(j > 0, a[(j - 1).clamp(min=0)], torch.zeros_like(a1))
    d0 = torch.where(j > 0, drop.gather(1, (j - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(d1))
    t = ((level - d0) / (d1 - d0).clamp_min(1e-300)).clamp(0, 1)
    return torch.where(hit, a0 + t * (a1 - a0), a[-1].expand_as(a1))


def expected_angular_accuracy(slicer, values, ctf: torch.Tensor | None, sigma2: torch.Tensor,
                              rotations: torch.Tensor, k: int, angles_deg: torch.Tensor | None = None,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B,)`` degrees: the expected angular accuracy (module docstring) of ``B`` images.

    slicer: full central slices ``(B, 3, 3) → (B, D, D)`` complex (e.g. ``Reference.slicer``); values:
    ``(rotations (M, 3, 3), k) → (M, N_h)`` slice values on the half-plane pixels of shells ``≤ k``
    (``Reference.values``). ctf: ``(B, D, D)`` real or ``None``. sigma2: ``(D//2+1,)`` noise power.
    rotations: ``(B, 3, 3)`` the images' poses (image → volume frame). k: shell limit. angles_deg: trial
    angles (default :func:`trial_angles`). generator: for the random axes (one per image, uniform on the
    sphere). Same dtype as ``rotations``."""
    b, dev, dt = rotations.shape[0], rotations.device, rotations.dtype
    ang = (trial_angles() if angles_deg is None else angles_deg).to(device=dev, dtype=dt)
    axes = torch.randn(b, 3, generator=generator, dtype=torch.float64).to(device=dev, dtype=dt)
    axes = axes / axes.norm(dim=1, keepdim=True)
    turned = rotations[:, None] @ rotvec_to_matrix(axes[:, None, :] * torch.deg2rad(ang)[None, :, None])  # (B, n, 3, 3)
    p0 = slicer(rotations)
    y = p0 if ctf is None else ctf * p0  # the noise-free images
    terms = prepare_image_terms(y, sigma2, None, ctf, k, half_plane=True)
    cand = torch.cat([rotations[:, None], turned], 1)  # (B, 1 + n, 3, 3)
    vals = values(cand.reshape(-1, 3, 3), k).reshape(b, cand.shape[1], -1)
    ll = log_likelihood_table(terms, vals, on_pixels=True)[:, 0]  # (B, 1 + n)
    return first_crossing(ang, ll[:, :1] - ll[:, 1:])


def window_mass(log_lik: torch.Tensor, angle: torch.Tensor, radius: float) -> torch.Tensor:
    """``(B,)`` the fraction of the posterior ``∝ exp(log_lik)`` over the candidates ``(B, K)`` (``−inf``
    where none) that lies within ``radius`` of the window's centre; ``angle (B, K)``: each candidate's
    angle from the centre (same unit as ``radius``)."""
    return (torch.softmax(log_lik, 1) * (angle <= radius)).sum(1)


def posterior_rms_angle(log_lik: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``(B,)`` radians: the RMS geodesic angle between the candidates ``rotations (B, K, 3, 3)`` and the
    mode (largest ``log_lik (B, K)``), weighted by the posterior ``∝ exp(log_lik)``."""
    mode = rotations.gather(1, log_lik.argmax(1)[:, None, None, None].expand(-1, 1, 3, 3))
    ang = geodesic_distance(rotations, mode.expand_as(rotations))
    return torch.sqrt((torch.softmax(log_lik, 1) * ang.square()).sum(1))


def grid_points_within(level: int, radius_rad: float) -> float:
    """The expected number of ``so3_grid(level)`` points within ``radius_rad`` (geodesic) of a rotation: the
    grid's size times the Haar measure of that ball, ``(r − sin r) / π``."""
    r = min(float(radius_rad), math.pi)
    return grid_size(level) * (r - math.sin(r)) / math.pi


def last_pass_cap(local: bool, max_coarse: int, max_significant: int) -> int:
    """The last pass's significant-set cap: ``max_significant`` in a global search; in a local one every
    significant child (8 rotations × 4 sub-shifts of each of ``max_coarse`` coarse poses), as RELION caps
    none: at a fine step the posterior spans more pairs than ``max_significant``, and the truncated one lost
    resolution (docs/METHODS.md, "Auto-refine: sampling that follows the pose accuracy")."""
    return max(max_significant, 32 * max_coarse) if local else max_significant


def significant_caps(accuracy_deg: float, order: int, coarse: int, final: int, limit_coarse: int = 128,
                     limit_final: int = 1024) -> tuple[int, int]:
    """``(coarse cap, final cap)`` of the significant sets of adaptive oversampling at grid ``order`` that
    hold a posterior of the measured accuracy: the grid points within ``2 × accuracy`` (a Gaussian of
    standard deviation accuracy / √2 per axis: ~95 % of its mass), at level ``order`` × 2 shifts for the
    coarse passes and at level ``order + 1`` × 4 sub-shifts for the last; at least ``coarse`` / ``final``
    (the configured caps), at most 8 × them and ``limit_coarse`` / ``limit_final`` (cost)."""
    r = 2 * math.radians(accuracy_deg)
    c = math.ceil(2 * grid_points_within(order, r))
    f = math.ceil(4 * grid_points_within(order + 1, r))
    return (min(max(coarse, c), max(coarse, min(limit_coarse, 8 * coarse))),
            min(max(final, f), max(final, min(limit_final, 8 * final))))

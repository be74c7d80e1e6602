"""Pose error after global alignment and handedness: the two derivations in
cryolens.metrics.pose_error checked by exact (closed-form) projections, and the metric's invariances."""

import math

import numpy as np
import pytest
import torch

from cryolens.imaging import (euler_to_matrix, gaussian_projection, gaussian_volume, geodesic_distance,
                              random_rotations, rotvec_to_matrix)
from cryolens.metrics import (align_rotations, apply_alignment, mirror_rotations, pose_error_summary, rotate_map,
                              rotation_errors)

F64 = torch.float64
J = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))
CENTERS = torch.tensor([[3.0, -2.0, 5.0], [-6.0, 4.0, -1.0], [0.0, 7.0, 2.0], [2.0, 1.0, -6.0]], dtype=F64)
SIGMAS = torch.tensor([2.0, 3.0, 2.5, 1.5], dtype=F64)
AMPS = torch.tensor([1.0, 0.7, 1.2, 0.9], dtype=F64)


def _rots(n, seed, device="cpu"):
    return random_rotations(n, generator=torch.Generator().manual_seed(seed), dtype=F64).to(device)


def _jitter(n, degrees, seed):
    """Rotations about random axes by angles of about ``degrees``."""
    v = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return rotvec_to_matrix(v * math.radians(degrees) / math.sqrt(3))


def test_rotated_map_needs_left_multiplied_poses():
    """Physics behind G · R_est ≈ R_true: the map V_est(u) = V(G u) (Gaussian centres Gᵀ μ) projected
    with Gᵀ R gives exactly the projections of V with R; align_rotations then returns that G."""
    rots = _rots(6, 1)
    g = _rots(1, 2)[0]
    truth = gaussian_projection(CENTERS, SIGMAS, AMPS, rots, 32)
    est_poses = g.T @ rots
    est = gaussian_projection(CENTERS @ g, SIGMAS, AMPS, est_poses, 32)  # rows μ_jᵀ G = (Gᵀ μ_j)ᵀ
    assert float((est - truth).abs().max()) < 1e-10
    # the right-hand product is not a symmetry of the data
    wrong = gaussian_projection(CENTERS @ g, SIGMAS, AMPS, rots @ g.T, 32)
    assert float((wrong - truth).abs().max()) > 0.1 * float(truth.abs().max())
    found, mirrored = align_rotations(est_poses, rots)
    assert not mirrored
    assert float((found - g).abs().max()) < 1e-9


def test_mirrored_map_needs_j_r_j_poses():
    """Physics behind the mirror: V_m(u) = V(J u) (centres J μ) projected with J R J gives exactly
    the projections of V with R; J R(rot, tilt, psi) J = R(rot + 180°, tilt, psi + 180°)."""
    rots = _rots(6, 3)
    truth = gaussian_projection(CENTERS, SIGMAS, AMPS, rots, 32)
    mirrored = gaussian_projection(CENTERS @ J, SIGMAS, AMPS, J @ rots @ J, 32)
    assert float((mirrored - truth).abs().max()) < 1e-10
    assert torch.allclose(mirror_rotations(rots), J @ rots @ J)
    a = torch.tensor([0.3, 1.1, -2.0], dtype=F64)
    assert torch.allclose(mirror_rotations(euler_to_matrix(*a)), euler_to_matrix(a[0] + math.pi, a[1], a[2] + math.pi))


def test_identical_sets_have_zero_error(device):
    """The same set twice: every error 0, no mirror, G = I."""
    r = _rots(200, 4, device).float()
    err = rotation_errors(r, r)
    assert err.shape == (200,) and err.max() < 1e-3  # float32 inputs: ~1e-5°
    g, mirrored = align_rotations(r, r)
    assert not mirrored and float((g - torch.eye(3, dtype=F64, device=device)).abs().max()) < 1e-6


def test_errors_are_invariant_to_a_global_rotation(device):
    """Left-multiplying the estimated set by any rotation leaves the aligned errors unchanged."""
    r = _rots(300, 5, device)
    est = _jitter(300, 8, 6).to(device) @ r
    base = rotation_errors(est, r)
    for seed in (7, 8):
        g = _rots(1, seed, device)[0]
        assert np.abs(rotation_errors(g @ est, r) - base).max() < 1e-6


def test_known_perturbation_gives_its_angle():
    """Each rotation perturbed by exactly θ about an axis, the same rotations appearing twice with
    opposite axes (so the best G is I): every aligned error is θ, for θ = 3°, 20° and 60°, with the
    perturbation on either side of R."""
    r = _rots(100, 9).repeat(2, 1, 1)
    axes = torch.randn(100, 3, generator=torch.Generator().manual_seed(10), dtype=F64)
    axes = axes / axes.norm(dim=1, keepdim=True)
    axes = torch.cat([axes, -axes])
    for theta in (3.0, 20.0, 60.0):
        p = rotvec_to_matrix(axes * math.radians(theta))
        assert np.abs(rotation_errors(p @ r, r) - theta).max() < 1e-6
        assert np.abs(rotation_errors(r @ p, r) - theta).max() < 1e-6


def test_detects_the_mirror():
    """Poses of a wrong-hand map (G · J R J, jittered by ~3°): flagged as mirrored, small error;
    without the mirror the best alignment leaves large errors."""
    r = _rots(300, 11)
    g = _rots(1, 12)[0]
    est = g @ mirror_rotations(_jitter(300, 3, 13) @ r)
    s = pose_error_summary(est, r)
    assert s["mirrored"] and s["median_deg"] < 5
    assert np.median(rotation_errors(est, r, allow_mirror=False)) > 30
    # and a proper-hand set is not flagged
    assert not pose_error_summary(g @ _jitter(300, 3, 13) @ r, r)["mirrored"]


def test_alignment_is_robust_to_a_minority_of_wrong_poses():
    """40% of the estimates replaced by random rotations: the robust fit still recovers G within 1°
    (plain least squares is pulled off by about 2°)."""
    r = _rots(500, 14)
    g = _rots(1, 15)[0]
    est = g.T @ (_jitter(500, 3, 16) @ r)
    est[:200] = _rots(200, 17)
    found, _ = align_rotations(est, r)
    assert math.degrees(float(geodesic_distance(found, g))) < 1.0
    ls, _ = align_rotations(est, r, iterations=0)
    assert math.degrees(float(geodesic_distance(ls, g))) > math.degrees(float(geodesic_distance(found, g)))


def test_unaligned_errors_and_summary():
    """align=False compares as given; the summary is JSON-ready and matches the per-image errors."""
    r = _rots(50, 18)
    g = _rots(1, 19)[0]
    raw = rotation_errors(g @ r, r, align=False)
    assert np.allclose(raw, math.degrees(float(geodesic_distance(g, torch.eye(3, dtype=F64)))))
    s = pose_error_summary(g @ r, r)
    assert s["median_deg"] < 1e-6 and s["n"] == 50 and isinstance(s["alignment"], list)
    assert np.allclose(apply_alignment(g @ r, torch.tensor(s["alignment"], dtype=F64), s["mirrored"]), r)


def test_rejects_mismatched_sets():
    """Different numbers of rotations are an error."""
    with pytest.raises(ValueError):
        rotation_errors(_rots(3, 0), _rots(4, 0))


def _gauss_map(centers, d=24):
    """Four Gaussians (σ 1.6 voxels) at ``centers (4, 3)`` ``(x, y, z)`` voxels from the centre, float32."""
    return gaussian_volume(centers, torch.full((4,), 1.6, dtype=F64), AMPS, d).float()


def test_rotate_map_moves_gaussian_centres():
    """rotate_map(V, G) with V(x) = Σ g(x − c) equals Σ g(x − G c) (analytic) to cubic-spline
    interpolation error (< 2 %; trilinear gave 6.4 %), and not Σ g(x − Gᵀ c) (the other direction,
    > 50 % off); mirrored, V(J Gᵀ x) = Σ g(x − G J c)."""
    g = random_rotations(1, generator=torch.Generator().manual_seed(2))[0].double()
    got = rotate_map(_gauss_map(CENTERS), g)
    want = _gauss_map(CENTERS @ g.T)
    assert float((got - want).norm() / want.norm()) < 0.02
    wrong = _gauss_map(CENTERS @ g)
    assert float((got - wrong).norm() / wrong.norm()) > 0.5
    j = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    got_m = rotate_map(_gauss_map(CENTERS), g, mirrored=True)
    want_m = _gauss_map((CENTERS * j) @ g.T)
    assert float((got_m - want_m).norm() / want_m.norm()) < 0.02

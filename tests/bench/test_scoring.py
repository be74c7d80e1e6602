"""Scoring's frame alignment against analytic Gaussian maps: a map whose frame is rotated (and
possibly mirrored) relative to the truth, reported with the poses that explain the same images,
is moved back onto the truth (FSC ≈ 1 where the truth has power); translations are found from the
cross-correlation peak."""

import math

import numpy as np
import pytest
import torch

from cryolens.bench.scoring import Frame, translation_to
from cryolens.imaging import gaussian_volume
from cryolens.imaging.rotations import random_rotations
from cryolens.metrics.fsc import fsc
from cryolens.metrics.pose_error import align_rotations

D = 24
CENTERS = torch.tensor([[4.0, -3.0, 5.0], [-5.0, 4.0, -2.0], [1.0, 6.0, 3.0], [-2.0, -5.0, -4.0]], dtype=torch.float64)


def _vol(centers):
    return gaussian_volume(centers, torch.full((4,), 1.6, dtype=torch.float64),
                           torch.tensor([1.0, 0.7, 1.3, 0.9], dtype=torch.float64), D).float()


@pytest.mark.parametrize("mirrored", [False, True])
def test_frame_from_poses_recovers_the_truth(mirrored):
    """An estimated map V_est(u) = V(G u) (mirrored: V(J G u)) with poses Gᵀ R (mirrored: Gᵀ J R J)
    explains the same images; aligning poses gives the frame that maps V_est back onto V:
    FSC > 0.98 over the shells where the Gaussians (σ = 1.6 px) have power (k ≤ 5)."""
    g = random_rotations(1, generator=torch.Generator().manual_seed(4))[0].double()
    j = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    r_true = random_rotations(200, generator=torch.Generator().manual_seed(5)).double()
    if mirrored:
        est_centers = CENTERS @ (j @ g)  # V(J G u): centres (J G)ᵀ c
        r_est = g.T @ j @ r_true @ j  # ∫ V(J G Gᵀ J R J p) dz = ∫ V(R J p) dz: the same images
    else:
        est_centers = CENTERS @ g  # V(G u): centres Gᵀ c
        r_est = g.T @ r_true
    v_est = _vol(est_centers)
    gg, mir = align_rotations(r_est, r_true)
    assert mir == mirrored
    aligned = Frame(gg, mir)(v_est)
    curve = fsc(aligned, _vol(CENTERS))
    assert curve[1:6].min() > 0.98


def test_translation_from_cross_correlation():
    """A map rolled by (2, −3, 1) voxels is rolled back by the shift found."""
    v = _vol(CENTERS)
    moved = torch.roll(v, (2, -3, 1), dims=(0, 1, 2))
    assert translation_to(moved, v, subvoxel=False) == (-2, 3, -1)
    assert np.allclose(translation_to(moved, v), (-2, 3, -1), atol=0.05)
    assert math.isclose(float(Frame(shift=(-2, 3, -1))(moved).sub(v).abs().max()), 0.0, abs_tol=1e-6)
    assert np.allclose(fsc(Frame(shift=(-2, 3, -1))(moved), v)[1:], 1.0)


def test_subvoxel_translation_from_cross_correlation():
    """Gaussians moved by a fraction of a voxel (closed form) are found within 0.15 voxel, and the
    frame with that shift brings the FSC to > 0.99 in every shell with power, where the integer shift
    alone leaves it lower at high frequency."""
    v = _vol(CENTERS)
    dz, dy, dx = 0.45, -1.4, 0.3
    moved = _vol(CENTERS + torch.tensor([dx, dy, dz], dtype=torch.float64))
    got = translation_to(moved, v)
    assert np.allclose(got, (-dz, -dy, -dx), atol=0.15), got
    back = fsc(Frame(shift=got)(moved), v)
    whole = fsc(Frame(shift=translation_to(moved, v, subvoxel=False))(moved), v)
    assert back[1:6].min() > 0.99
    assert whole[1:6].min() < back[1:6].min()


def test_symmetric_pose_alignment_with_a_two_fold():
    """For a particle with a two-fold S (V(S u) = V(u)), poses R and S R give the same images: an
    estimate that is a global rotation G of the truth with a random half of the images given the
    symmetric copy has zero error modulo S and recovers G (up to S); ignoring S, half the errors are ≈ 180°."""
    from cryolens.bench.scoring import symmetric_pose_alignment
    from cryolens.imaging.rotations import geodesic_distance, rotvec_to_matrix

    t = random_rotations(300, generator=torch.Generator().manual_seed(1)).double()
    s = rotvec_to_matrix(torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64) * math.pi)
    g = random_rotations(1, generator=torch.Generator().manual_seed(2))[0].double()
    flip = torch.rand(300, generator=torch.Generator().manual_seed(3)) < 0.5
    est = g.T @ torch.where(flip[:, None, None], s @ t, t)
    g_hat, mirrored, err = symmetric_pose_alignment(est, t, [torch.eye(3, dtype=torch.float64), s])
    assert not mirrored and err.max() < 1e-5
    # G is itself defined up to S: S G maps each image to the other copy of its truth
    assert min(float(geodesic_distance(g_hat, g)), float(geodesic_distance(g_hat, s @ g))) < 1e-7
    _, _, err_plain = symmetric_pose_alignment(est, t, [torch.eye(3, dtype=torch.float64)])
    assert 0.3 < (err_plain > 170).mean() < 0.7

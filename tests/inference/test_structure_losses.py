"""E2GMM's FRC loss and the structure losses against hand computations: an FRC by explicit loops over the
pixels of each ring (float64 numpy), rings built to correlate +1, −1 and 0, the ring band of EMAN2's
resolution options, and every structure term on a 3-4-5 triangle whose distances are known by heart."""

import math

import numpy as np
import pytest
import torch

from cryolens.inference.frc import frc_loss, frc_rings, latent_radius_penalty, ring_band
from cryolens.inference.structure_losses import (StructureRestraints, base_pull_loss, bond_length_loss,
                                                 ca_distance_loss, consecutive_pairs, neighbour_pairs,
                                                 rigidity_loss)


def _frc_by_loops(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """FRC of two centred (D, D) transforms by a loop over pixels, ring = round(|(i − D/2, j − D/2)|)."""
    d = p.shape[-1]
    num, pp, xx = np.zeros(d // 2 + 1), np.zeros(d // 2 + 1), np.zeros(d // 2 + 1)
    for iy in range(d):
        for ix in range(d):
            k = int(round(math.hypot(iy - d // 2, ix - d // 2)))
            if k > d // 2:
                continue
            num[k] += (p[iy, ix] * np.conj(x[iy, ix])).real
            pp[k] += abs(p[iy, ix]) ** 2
            xx[k] += abs(x[iy, ix]) ** 2
    return num / np.sqrt(pp * xx)


def test_frc_equals_a_loop_over_each_ring():
    """Random complex (2, 8, 8) transforms: every ring's FRC equals the float64 loop, and the loss over
    rings 1..3 is minus their plain mean."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal((2, 8, 8)) + 1j * rng.standard_normal((2, 8, 8))
    x = p + 0.7 * (rng.standard_normal((2, 8, 8)) + 1j * rng.standard_normal((2, 8, 8)))
    got = frc_rings(torch.as_tensor(p), torch.as_tensor(x)).numpy()
    ref = np.stack([_frc_by_loops(p[b], x[b]) for b in range(2)])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    loss = frc_loss(torch.as_tensor(p), torch.as_tensor(x), 1, 3).numpy()
    np.testing.assert_allclose(loss, -ref[:, 1:4].mean(1), rtol=1e-12)


def test_frc_of_built_rings_is_plus_one_minus_one_and_zero_and_scale_free():
    """Prediction = 5·X on ring 1, −X on ring 2, i·X on ring 3 (orthogonal): FRC 1, −1, 0, and the loss over
    rings 1..3 is −(1 − 1 + 0)/3 = 0; over ring 1 alone it is −1; a ring without power gives 0, not NaN."""
    d = 8
    rng = np.random.default_rng(1)
    x = rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d))
    yy, xx = np.mgrid[:d, :d] - d // 2
    ring = np.round(np.hypot(yy, xx)).astype(int)
    p = np.where(ring == 1, 5 * x, np.where(ring == 2, -x, np.where(ring == 3, 1j * x, 0)))
    f = frc_rings(torch.as_tensor(p)[None], torch.as_tensor(x)[None])[0].numpy()
    np.testing.assert_allclose(f[1:4], [1.0, -1.0, 0.0], atol=1e-12)
    assert f[4] == 0.0 and np.isfinite(f).all()
    assert abs(float(frc_loss(torch.as_tensor(p)[None], torch.as_tensor(x)[None], 1, 3))) < 1e-12
    assert float(frc_loss(torch.as_tensor(p)[None], torch.as_tensor(x)[None], 1, 1)) == pytest.approx(-1.0)


def test_ring_band_follows_emans_resolution_options():
    """D = 64, 1.5 Å/px: EMAN2's default --minres 500 Å gives ring max(1, ⌈192/500⌉ // 2) = 1; 40 Å gives
    ⌈4.8⌉ // 2 = 2; the top ring is D/2 − 1 = 31, or ⌊96/8⌋ = 12 for 8 Å; an empty band is an error."""
    assert ring_band(64, 1.5, 500.0, 0.0) == (1, 31)
    assert ring_band(64, 1.5, 40.0, 8.0) == (2, 12)
    with pytest.raises(ValueError):
        ring_band(16, 1.0, 4.0, 8.0)


def test_latent_radius_penalty_by_hand():
    """‖(3, 4)‖ = 5 → 4; ‖(0.6, 0.8)‖ = 1 → 0; ‖(0.1, 0)‖ → 0."""
    z = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.1, 0.0]])
    torch.testing.assert_close(latent_radius_penalty(z), torch.tensor([4.0, 0.0, 0.0]))


TRIANGLE = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [3.0, 4.0, 0.0]]], dtype=torch.float64)


def test_structure_terms_on_a_345_triangle():
    """Sides 3, 4 and hypotenuse 5: Cα term over (0,1), (1,2) = ((3 − 3.8)² + (4 − 3.8)²)/2 = 0.34; bond
    lengths 3.5 and 4 → ((−0.5)² + 0)/2 = 0.125; pull to the triangle moved by (1, 2, 2) = 9 Å²; rigidity over
    the three sides of a base triangle scaled by 2 (sides 6, 8, 10) = (9 + 16 + 25)/3."""
    pairs = torch.tensor([[0, 1], [1, 2]])
    assert float(ca_distance_loss(TRIANGLE, pairs)) == pytest.approx(0.34)
    assert float(bond_length_loss(TRIANGLE, pairs, torch.tensor([3.5, 4.0]))) == pytest.approx(0.125)
    assert float(base_pull_loss(TRIANGLE + torch.tensor([1.0, 2.0, 2.0]), TRIANGLE[0])) == pytest.approx(9.0)
    base = 2 * TRIANGLE[0]
    sides = neighbour_pairs(base, 10.5)
    assert sides.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert neighbour_pairs(base, 9.0).tolist() == [[0, 1], [1, 2]]
    lengths = torch.tensor([6.0, 10.0, 8.0], dtype=torch.float64)
    assert float(rigidity_loss(TRIANGLE, sides, lengths)) == pytest.approx((9 + 25 + 16) / 3)


def test_consecutive_pairs_break_at_chain_ends_and_numbering_gaps():
    """Residues A1 A2 A3 A5 B6 B7: pairs (0,1), (1,2) and (4,5) — not across the gap A3→A5 nor A5→B6."""
    pairs = consecutive_pairs(["A", "A", "A", "A", "B", "B"], [1, 2, 3, 5, 6, 7])
    assert pairs.tolist() == [[0, 1], [1, 2], [4, 5]]


def test_restraints_switch_terms_and_weight_their_sum():
    """From the scaled base triangle: with w_ca = 2, w_pull = 0.5 and the others off, only 'ca' and 'pull' are
    computed and the total is 2·0.34 + 0.5·pull; the gradient of the total is finite and reaches every atom."""
    base = 2 * TRIANGLE[0]
    r = StructureRestraints.from_base(base, ca_pairs=torch.tensor([[0, 1], [1, 2]]), rigid_cutoff=10.5,
                                      w_ca=2.0, w_pull=0.5)
    x = TRIANGLE.clone().float().requires_grad_(True)
    terms = r.terms(x)
    assert sorted(terms) == ["ca", "pull"]
    pull = float(((x.detach() - base.float()) ** 2).sum(-1).mean())
    assert float(r.total(terms).detach()) == pytest.approx(2 * 0.34 + 0.5 * pull, rel=1e-6)
    r.total(terms).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()
    assert r.rigid_lengths.tolist() == pytest.approx([6.0, 10.0, 8.0])

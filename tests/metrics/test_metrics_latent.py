"""Latent-distribution metrics against closed forms: W2 of two Gaussians (the Gaussian W2 formula,
and the 1-D |Δμ| + |Δσ| case), W2 of two samples of one law shrinking as N grows, Procrustes
recovering a known orthogonal map, and the affine map to a known 1-D truth."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from cryolens.metrics.latent import (conformational_resolution, gaussian_w2, latent_vs_truth,
                                     orthogonal_procrustes, wasserstein, wasserstein_procrustes)


def test_wasserstein_same_gaussian_shrinks_with_n():
    """Two independent samples of N(0, I_2): the empirical W2 decreases as N grows (100 → 300 → 900),
    and by 900 points is below 0.6× its value at 100."""
    rng = np.random.default_rng(0)
    ws = [wasserstein(rng.standard_normal((n, 2)), rng.standard_normal((n, 2))) for n in (100, 300, 900)]
    assert ws[0] > ws[1] > ws[2] and ws[2] < 0.6 * ws[0]


def test_wasserstein_matches_gaussian_closed_form():
    """1-D: W2(N(0,1), N(3, 2²)) = sqrt(3² + (2−1)²) = √10, both from the formula and (within
    sampling error) from exact OT on 600-point quantile samples; 2-D: gaussian_w2 against
    √(|Δμ|² + tr(Σ1 + Σ2 − 2(Σ2^½ Σ1 Σ2^½)^½)) for commuting diagonal covariances = Σ(√a − √b)²."""
    from scipy.stats import norm

    assert gaussian_w2(0.0, 1.0, 3.0, 4.0) == pytest.approx(np.sqrt(10), rel=1e-9)
    q = norm.ppf((np.arange(600) + 0.5) / 600)
    assert wasserstein(q, 3 + 2 * q[::-1]) == pytest.approx(np.sqrt(10), rel=0.02)
    m1, m2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    c1, c2 = np.diag([1.0, 4.0]), np.diag([9.0, 0.25])
    hand = np.sqrt(8 + (1 - 3) ** 2 + (2 - 0.5) ** 2)
    assert gaussian_w2(m1, c1, m2, c2) == pytest.approx(hand, rel=1e-9)


def test_procrustes_recovers_a_known_rotation():
    """y = x Q + t with Q a random orthogonal matrix: paired Procrustes returns Q exactly; the
    unpaired Wasserstein-Procrustes (y's rows shuffled) also finds Q and aligns the clouds to W2 ≈ 0."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 3)) * np.array([3.0, 1.5, 0.5])
    q = ortho_group.rvs(3, random_state=2)
    y = x @ q + np.array([1.0, -2.0, 0.5])
    q_hat, _, _ = orthogonal_procrustes(x, y)
    assert np.abs(q_hat - q).max() < 1e-9
    q_w, mx, my, w = wasserstein_procrustes(x, y[rng.permutation(300)], max_points=300)
    assert np.abs(q_w - q).max() < 1e-6 and w < 1e-6
    cr = conformational_resolution(x, y[rng.permutation(300)], max_points=300)
    assert cr["w2"] < 1e-6 and cr["w2_unaligned"] > 1.0


def test_latent_vs_truth_affine_map():
    """Latents that are an affine image of a 1-D truth (2-D embedding): R² = 1 and W1 = 0;
    latents independent of the truth: R² ≈ 0 and W1 ≈ the W1 between the truth and its mean
    (the regression collapses the distribution)."""
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 25, 500)
    z = np.stack([0.1 * t + 1, -0.05 * t], 1)
    out = latent_vs_truth(z, t)
    assert out["r2"] == pytest.approx(1.0, abs=1e-9) and out["w1"] < 1e-6
    bad = latent_vs_truth(rng.standard_normal((500, 2)), t)
    assert bad["r2"] < 0.05 and bad["w1"] == pytest.approx(np.abs(t - t.mean()).mean(), rel=0.1)

"""CryoBench's scores against independent computations: AMI against its definition with the expected
mutual information enumerated over every permutation of a small labelling; |Spearman| of the best axis
against scipy's spearmanr and a hand case; the heterogeneous gain against a numpy FSC-AUC written here."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from cryolens.metrics.discrete import adjusted_mutual_information, discrete_scores
from cryolens.metrics.heterogeneity import heterogeneity_gain, per_conformation_fsc
from cryolens.metrics.latent import spearman_best_axis


def _mi(a, b):
    n = len(a)
    out = 0.0
    for x in set(a):
        for y in set(b):
            nxy = sum(1 for i in range(n) if a[i] == x and b[i] == y)
            if nxy:
                out += nxy / n * math.log(n * nxy / (a.count(x) * b.count(y)))
    return out


def _h(a):
    n = len(a)
    return -sum(a.count(x) / n * math.log(a.count(x) / n) for x in set(a))


def test_ami_against_enumerated_expectation():
    """AMI = (MI − E[MI]) / (mean(H(U), H(V)) − E[MI]) with E[MI] the mean over all 7! permutations of one
    labelling (the permutation model), computed by brute force; renaming labels gives 1."""
    u = [0, 0, 0, 1, 1, 2, 2]
    v = [1, 1, 0, 0, 0, 2, 1]
    emi = np.mean([_mi(u, [v[i] for i in p]) for p in itertools.permutations(range(7))])
    expected = (_mi(u, v) - emi) / (0.5 * (_h(u) + _h(v)) - emi)
    assert adjusted_mutual_information(v, u) == pytest.approx(expected, abs=1e-10)
    assert adjusted_mutual_information([5, 5, 5, 3, 3, 9, 9], u) == pytest.approx(1.0)
    s = discrete_scores(v, u)
    assert s["class_accuracy"] == pytest.approx(5 / 7)  # hand count, best matching 1→0 (2), 0→1 (2), 2→2 (1)
    assert s["ami"] == pytest.approx(expected, abs=1e-10)


def test_spearman_best_axis():
    """A latent whose first coordinate is noise and whose second is a monotone (cubic) function of the truth:
    the best axis is z1 with |ρ| = 1; on random latents each candidate agrees with scipy's spearmanr."""
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, 200)
    z = np.stack([rng.normal(size=200), -(t ** 3)], 1)
    out = spearman_best_axis(z, t)
    assert out["axis"] == "z1" and out["abs_spearman"] == pytest.approx(1.0)
    z = rng.normal(size=(200, 3)) + 0.3 * t[:, None]
    out = spearman_best_axis(z, t)
    zc = z - z.mean(0)
    pcs = zc @ np.linalg.svd(zc, full_matrices=False)[2].T
    ref = [abs(spearmanr(z[:, i], t)[0]) for i in range(3)] + [abs(spearmanr(pcs[:, i], t)[0]) for i in range(3)]
    assert out["abs_spearman"] == pytest.approx(max(ref), abs=1e-12)
    assert out["abs_spearman_pc1"] == pytest.approx(ref[3], abs=1e-12)


def _fsc_auc_numpy(a, b):
    """FSC-AUC written out with numpy: rfftn half-space, shells round(|k|) (half away from zero), FSC per
    shell, trapezoid over k / D in [0, 0.5]."""
    d = a.shape[-1]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(d, 1 / d)
    kz, ky, kx = np.meshgrid(k, k, np.arange(d // 2 + 1), indexing="ij")
    shell = np.floor(np.sqrt(kx ** 2 + ky ** 2 + kz ** 2) + 0.5).astype(int)
    curve = np.array([np.real((fa * fb.conj())[shell == s].sum()) /
                      np.sqrt((abs(fa[shell == s]) ** 2).sum() * (abs(fb[shell == s]) ** 2).sum())
                      for s in range(d // 2 + 1)])
    f = np.arange(d // 2 + 1) / d
    return float(np.sum(0.5 * (curve[1:] + curve[:-1]) * np.diff(f)))


def test_heterogeneity_gain_against_numpy():
    """Three random maps with populations 0.5 / 0.3 / 0.2: the consensus AUC is the population-weighted
    numpy FSC-AUC of their weighted mean against each; the heterogeneous AUC of unfiltered maps is 0.5;
    maps that are scaled copies of one another give no gain at all."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 8, 8, 8))
    p = np.array([0.5, 0.3, 0.2])
    cons = (p[:, None, None, None] * v).sum(0)
    expected = sum(pk * _fsc_auc_numpy(cons, vk) for pk, vk in zip(p, v))
    g = heterogeneity_gain(v, p, pixel_size=2.0)
    assert g["auc_consensus"] == pytest.approx(expected, abs=1e-10)
    assert g["auc_heterogeneous"] == pytest.approx(0.5, abs=1e-12)
    assert g["gain"] == pytest.approx(0.5 / expected - 1, abs=1e-9)
    same = heterogeneity_gain(np.stack([v[0], 2 * v[0], 0.5 * v[0]]), p, 2.0, resolution=6.0)
    assert same["gain"] == pytest.approx(0.0, abs=1e-12)


def test_paired_per_conformation_fsc_keeps_the_pairing():
    """paired=True scores estimated map k against state k (numpy FSC-AUC of each pair), even where another
    pairing would score higher; unpaired matching finds the better permutation."""
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(2, 8, 8, 8))
    est = truth[::-1] + 0.3 * rng.normal(size=(2, 8, 8, 8))  # est 0 looks like state 1 and vice versa
    out = per_conformation_fsc(est, truth, 2.0, paired=True)
    assert out["match"] == [0, 1]
    np.testing.assert_allclose(out["auc"], [_fsc_auc_numpy(truth[k], est[k]) for k in range(2)], atol=1e-10)
    assert per_conformation_fsc(est, truth, 2.0)["match"] == [1, 0]

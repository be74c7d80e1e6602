"""Heterogeneity metrics: per-image FSC-AUC against the analytic extremes (a map against itself
integrates FSC ≡ 1 over [0, 0.5] cycles/px = 0.5; independent noise maps ≈ 0), per-conformation
matching against a known permutation, and the FSC hierarchical clustering on maps built to differ
only beyond a known frequency."""

import numpy as np
import torch

from cryolens.imaging import gaussian_volume
from cryolens.metrics.heterogeneity import (cluster_by_resolution, conformational_clustering,
                                            fsc_distance_matrix, per_conformation_fsc, per_image_fsc_auc)

D = 16


def _maps(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        c = (torch.rand(6, 3, generator=g) - 0.5) * 8
        out.append(gaussian_volume(c, torch.full((6,), 1.2), torch.ones(6), D))
    return torch.stack(out).float()


def test_per_image_fsc_auc_self_is_half_and_unrelated_is_zero(device):
    """Decoding each image's latent to exactly its truth map gives FSC ≡ 1, whose area over
    [0, 0.5] cycles/px is 0.5 (trapezoid of a constant); decoding to independent white-noise
    maps gives a mean AUC ≈ 0 (|mean| < 0.02, the noise shells cancel)."""
    truth = _maps(3)
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1] * 10)
    latents = labels[:, None].astype(np.float32)

    def exact(z):
        return truth[z[:, 0].long().cpu()].to(z.device)

    auc = per_image_fsc_auc(exact, latents, truth, labels, n_images=30, seed=1, device=device)
    assert auc.shape == (30,)
    assert np.allclose(auc, 0.5, atol=1e-9)

    gen = torch.Generator().manual_seed(7)

    def noise(z):
        return torch.randn(z.shape[0], D, D, D, generator=gen).to(z.device)

    auc_n = per_image_fsc_auc(noise, latents, truth, labels, n_images=40, seed=1, device=device)
    assert abs(auc_n.mean()) < 0.02 and auc_n.max() < 0.1


def test_per_image_fsc_auc_samples_without_replacement():
    """n_images larger than N scores every image once, in index order."""
    truth = _maps(1)
    labels = np.zeros(5, dtype=int)
    auc, idx = per_image_fsc_auc(lambda z: truth.expand(z.shape[0], D, D, D), np.zeros((5, 2)), truth, labels,
                                 n_images=100, return_indices=True)
    assert idx.tolist() == [0, 1, 2, 3, 4] and np.allclose(auc, 0.5)


def test_per_conformation_fsc_finds_the_permutation():
    """Estimated maps given in a shuffled order (plus noise) are matched back to the permutation
    that made them, and each matched FSC-AUC exceeds every mismatched one."""
    truth = _maps(3, seed=2)
    perm = [2, 0, 1]
    est = truth[perm] + 0.01 * torch.randn(3, D, D, D)
    out = per_conformation_fsc(est, truth, pixel_size=1.0)
    assert out["match"] == [1, 2, 0]  # truth i sits at est index perm.index(i)
    assert min(out["auc"]) > 0.3


def _lowpass_pair(base, other, kcut):
    """``base`` below shell kcut, ``other`` above: maps that agree to exactly kcut."""
    fb, fo = torch.fft.fftn(base.double()), torch.fft.fftn(other.double())
    f = torch.fft.fftfreq(D, 1 / D)
    kz, ky, kx = torch.meshgrid(f, f, f, indexing="ij")
    low = torch.floor(torch.sqrt(kx ** 2 + ky ** 2 + kz ** 2) + 0.5) < kcut  # whole FSC shells
    return torch.fft.ifftn(torch.where(low, fb, fo)).real


def test_hierarchical_clustering_splits_where_the_maps_differ():
    """Maps A and A' share A's Fourier coefficients below shell 4 and differ above; map B is
    unrelated. At coarse resolution (shell 2: D/2 px) A and A' are one conformation and B another;
    at fine resolution (shell 6) all three are distinct; the distance A–A' lies between D/4 and
    D/3 px (the FSC is 1 up to shell 3 and ≈ 0 from shell 4)."""
    a, b = _maps(2, seed=4)
    noise = torch.randn(D, D, D) * a.std()
    a2 = _lowpass_pair(a, noise, 4)
    vols = torch.stack([a.double(), a2, b.double()])
    dist = fsc_distance_matrix(vols, pixel_size=1.0)
    assert 3.0 < D / dist[0, 1] < 4.0  # FSC 1 at shell 3, ≈ 0 at shell 4: the crossing lies between
    labels = cluster_by_resolution(dist, np.array([D / 2.0, D / 6.0]))
    assert labels[0][0] == labels[0][1] != labels[0][2]
    assert len(set(labels[1].tolist())) == 3
    out = conformational_clustering(vols, vols, pixel_size=1.0)
    assert out["mean_rand_index"] == 1.0 and out["n_clusters"] == out["n_clusters_truth"]

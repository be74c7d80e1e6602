"""Latent-space analysis pieces against facts known by construction: a cloud stretched along a chosen
axis, well-separated clusters, points on a half circle, and particle subsets read back from disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryolens.analysis.latent import (graph_path, kmeans, knn_graph, pc_traversal, pca, select_clusters,
                                      select_pc_box, write_subset)
from cryolens.errors import InputError
from cryolens.imaging.ctf import CTFParams
from cryolens.io import read_cs, read_images, read_star, write_stack
from cryolens.io.particles import Particles


def test_pca_recovers_known_axis():
    """A cloud with std 5 along a chosen unit axis u and 0.3 across it: PC1 is ±u, its variance is
    25 (to sampling error), PC scores invert back to z, and PC1 scores equal the projections on u."""
    rng = np.random.default_rng(1)
    u = rng.normal(size=6)
    u /= np.linalg.norm(u)
    t = rng.normal(scale=5.0, size=4000)
    z = 2.0 + t[:, None] * u + rng.normal(scale=0.3, size=(4000, 6))
    p = pca(z)
    assert abs(p.components[0] @ u) > 0.9995
    assert p.explained_variance[0] == pytest.approx(np.var(z @ u, ddof=1), rel=0.01)
    assert p.explained_variance[1] == pytest.approx(0.09, rel=0.15)
    np.testing.assert_allclose(p.components @ p.components.T, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(p.inverse(p.scores), z, atol=1e-10)
    s = np.sign(p.components[0] @ u)
    np.testing.assert_allclose(p.scores[:, 0], s * (z - z.mean(0)) @ u, atol=0.3 * 6)
    assert np.corrcoef(p.scores[:, 0], t)[0, 1] * s > 0.998
    # traversal: scores at the 5th … 95th percentiles of PC1, points on the line mean + s·u1
    pts, sc = pc_traversal(p, 0, 7, (5, 95))
    np.testing.assert_allclose(sc, np.percentile(p.scores[:, 0], np.linspace(5, 95, 7)))
    np.testing.assert_allclose(p.transform(pts)[:, 0], sc, atol=1e-10)
    np.testing.assert_allclose(p.transform(pts)[:, 1:], 0, atol=1e-10)


def test_kmeans_recovers_separated_clusters():
    """Four Gaussian clusters 20σ apart in 5D: k-means' partition equals the true one (up to
    renaming) and each centre's on-data particle is the brute-force nearest particle."""
    rng = np.random.default_rng(2)
    means = rng.normal(scale=20.0, size=(4, 5))
    truth = rng.integers(0, 4, 600)
    z = means[truth] + rng.normal(size=(600, 5))
    km = kmeans(z, 4, seed=0)
    table = np.zeros((4, 4), int)
    np.add.at(table, (truth, km.labels), 1)
    assert ((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all()  # a permutation
    for j in range(4):
        np.testing.assert_allclose(km.centers[j], z[km.labels == j].mean(0), atol=1e-8)
        d = ((z - km.centers[j]) ** 2).sum(1)
        assert km.nearest[j] == int(np.argmin(d))
        assert km.labels[km.nearest[j]] == j


def test_graph_path_follows_half_circle():
    """Points on a half circle: the kNN-graph path from one end to the other goes through the data in
    order of the angle (monotone), its length is the arc's π (not the chord's 2), and it passes the
    top (y ≈ 1), where the straight line between the ends (y = 0) does not go."""
    rng = np.random.default_rng(3)
    t = rng.uniform(0, np.pi, 400)
    z = np.stack([np.cos(t), np.sin(t), 0.01 * rng.normal(size=400)], 1)
    start, end = int(np.argmin(t)), int(np.argmax(t))
    path = graph_path(z, start, end, k=8)
    assert path[0] == start and path[-1] == end
    assert (np.diff(t[path]) > 0).all()
    steps = np.linalg.norm(np.diff(z[path], axis=0), axis=1)
    assert steps.sum() == pytest.approx(t.max() - t.min(), rel=0.02)  # arc length of the unit circle
    assert z[path, 1].max() > 0.99
    g = knn_graph(z, 8)
    assert all(g[a, b] > 0 for a, b in zip(path[:-1], path[1:]))  # every step is a graph edge
    # two far-apart blobs with few neighbours are not connected
    far = np.concatenate([rng.normal(size=(20, 2)), 100 + rng.normal(size=(20, 2))])
    with pytest.raises(InputError, match="not connected"):
        graph_path(far, 0, 39, k=3)


def _particles(tmp_path, n: int = 40, d: int = 16) -> tuple[Particles, np.ndarray]:
    rng = np.random.default_rng(4)
    images = rng.normal(size=(n, d, d)).astype(np.float32)
    stack = write_stack(tmp_path / "stack.mrcs", images, 1.5)
    ctf = CTFParams(*[torch.as_tensor(v, dtype=torch.float32) for v in (
        rng.uniform(8000, 25000, n), rng.uniform(8000, 25000, n), rng.uniform(0, np.pi, n), np.full(n, 300.0),
        np.full(n, 2.7), np.full(n, 0.1), np.zeros(n), np.zeros(n))])
    p = Particles(pixel_size=1.5, box_size=d, image_files=[str(stack.resolve())],
                  image_file_index=np.zeros(n, np.int64), image_index=rng.permutation(n),
                  rotations=torch.as_tensor(Rotation.random(n, random_state=4).as_matrix(), dtype=torch.float32),
                  shifts=torch.as_tensor(rng.uniform(-3, 3, (n, 2)), dtype=torch.float32), ctf=ctf)
    return p, images


def test_subsets_round_trip_star_and_cs(tmp_path):
    """A k-means cluster and a PC box chosen from latents, written as STAR and .cs and read back: the
    rows are exactly the chosen particles (same images, poses, shifts, defocus), in row order."""
    particles, images = _particles(tmp_path)
    rng = np.random.default_rng(5)
    truth = np.arange(40) % 2
    z = np.where(truth[:, None] == 1, 10.0, -10.0) + rng.normal(size=(40, 3))
    km = kmeans(z, 2)
    cl = int(km.labels[7])
    idx = select_clusters(km.labels, [cl])
    np.testing.assert_array_equal(idx, np.nonzero(truth == truth[7])[0])
    p = pca(z)
    box = {0: (0.0, np.inf), 1: (-1.0, 1.0)}
    idx_box = select_pc_box(p.scores, box)
    np.testing.assert_array_equal(idx_box, [i for i in range(40)
                                            if p.scores[i, 0] >= 0 and -1 <= p.scores[i, 1] <= 1])
    for sel, stem in ((idx, "cluster"), (idx_box, "box")):
        star, cs = write_subset(particles, sel, tmp_path / "out" / stem)
        for back in (read_star(star), read_cs(cs)):
            assert len(back) == len(sel)
            np.testing.assert_array_equal(back.image_index, particles.image_index[sel])
            np.testing.assert_allclose(read_images(back, np.arange(len(sel))).numpy(),
                                       images[particles.image_index[sel]])
            np.testing.assert_allclose(back.rotations.numpy(), particles.rotations[sel].numpy(), atol=1e-5)
            np.testing.assert_allclose(back.shifts.numpy(), particles.shifts[sel].numpy(), atol=1e-4)
            np.testing.assert_allclose(back.ctf.defocus_u.numpy(), particles.ctf.defocus_u[sel].numpy(), rtol=1e-6)
    with pytest.raises(InputError, match="do not exist"):
        select_clusters(km.labels, [5])
    with pytest.raises(InputError, match="empty"):
        write_subset(particles, np.array([], np.int64), tmp_path / "none")

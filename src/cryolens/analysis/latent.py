"""Latent-space analysis of a heterogeneous reconstruction: ``z`` ``(N, L)``, one row per particle in
particle (STAR) order, and a decoder ``z → map``.

Pieces (each a small function on arrays, usable on its own):

- :func:`pca` — principal components of ``z`` (SVD in float64), scores, explained variance;
- :func:`embed_umap` — a 2D UMAP embedding (umap-learn);
- :func:`kmeans` — k-means centres and, for each, the on-data particle nearest to it (whose ``z``
  is decoded, as cryoDRGN's ``analyze`` does, so each map belongs to a real particle);
- :func:`pc_traversal` — points along a principal component at evenly spaced percentiles of its scores;
- :func:`knn_graph` / :func:`graph_path` — the shortest path between two particles through a
  k-nearest-neighbour graph of the latents (so the path stays on the data);
- :func:`select_clusters` / :func:`select_pc_box` / :func:`write_subset` — particle subsets chosen in
  latent space, written back as RELION STAR and cryoSPARC ``.cs``;
- :func:`decode_maps` — maps of a batch of latent points;

:func:`cryolens.analysis.latent_run.analyze_latents` puts all of them into a run folder, with plots.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.particles import Particles

log = logging.getLogger(__name__)

Decode = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------- PCA
@dataclass
class PCA:
    """Principal components of ``N`` latent vectors of dimension ``L``.

    mean: ``(L,)``. components: ``(k, L)`` orthonormal rows, sign fixed so that each row's entry of
    largest magnitude is positive. explained_variance: ``(k,)`` variance of the scores along each
    component (``ddof=1``). explained_variance_ratio: ``(k,)`` fraction of the total variance.
    scores: ``(N, k)`` the coordinates ``(z − mean) @ componentsᵀ``.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    scores: np.ndarray

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Scores ``(M, k)`` of latents ``z`` ``(M, L)``."""
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.components.T

    def inverse(self, scores: np.ndarray) -> np.ndarray:
        """Latent points ``(M, L)`` with PC scores ``(M, k)`` (the mean plus the components)."""
        s = np.asarray(scores, dtype=np.float64)
        return self.mean + s @ self.components[: s.shape[1]]


def check_z(z) -> np.ndarray:
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
        raise InputError(f"latents of shape {z.shape}: expected (N, L) with N ≥ 2")
    if not np.isfinite(z).all():
        raise InputError(f"latents: row {int(np.nonzero(~np.isfinite(z).all(1))[0][0])} (0-based) is not finite")
    return z


def pca(z: np.ndarray, n_components: int | None = None) -> PCA:
    """PCA of ``z`` ``(N, L)`` by SVD of the centred data in float64; ``n_components`` default ``L``
    (at most ``min(N, L)``)."""
    z = check_z(z)
    n, dim = z.shape
    k = min(n, dim) if n_components is None else min(int(n_components), n, dim)
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    vt = vt[:k]
    sign = np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])
    vt = vt * sign[:, None]
    var = s ** 2 / max(n - 1, 1)
    total = var.sum()
    return PCA(mean=mean, components=vt, explained_variance=var[:k],
               explained_variance_ratio=var[:k] / total if total > 0 else np.zeros(k),
               scores=(z - mean) @ vt.T)


# ---------------------------------------------------------------------------------------------- UMAP
def embed_umap(z: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2D UMAP embedding ``(N, 2)`` float32 of ``z`` ``(N, L)`` (umap-learn; one thread, seeded, so
    the result is reproducible). The first call in a process compiles umap's kernels (~15 s)."""
    z = check_z(z)
    import umap  # heavy import (numba): only when asked

    n_neighbors = int(min(n_neighbors, z.shape[0] - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, n_neighbors), min_dist=min_dist, random_state=seed,
                        n_jobs=1)
    return np.asarray(reducer.fit_transform(z.astype(np.float32)), dtype=np.float32)


# ------------------------------------------------------------------------------------------- k-means
@dataclass
class KMeansResult:
    """labels: ``(N,)`` cluster of each particle, 0-based. centers: ``(K, L)`` cluster means.
    nearest: ``(K,)`` index of the particle whose ``z`` is nearest to each centre (on-data)."""

    labels: np.ndarray
    centers: np.ndarray
    nearest: np.ndarray


def nearest_points(z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(M,)`` index of the row of ``z`` ``(N, L)`` nearest (Euclidean) to each of ``points`` ``(M, L)``."""
    from scipy.spatial import cKDTree

    return cKDTree(np.asarray(z, dtype=np.float64)).query(np.asarray(points, dtype=np.float64))[1].astype(np.int64)


def kmeans(z: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> KMeansResult:
    """k-means (scikit-learn, k-means++ initialisation, best of ``n_init``) of ``z`` ``(N, L)`` into
    ``k`` clusters, with the on-data particle nearest to each centre."""
    from sklearn.cluster import KMeans

    z = check_z(z)
    if not 1 <= k <= z.shape[0]:
        raise InputError(f"k-means: {k} clusters for {z.shape[0]} particles")
    km = KMeans(n_clusters=int(k), n_init=n_init, random_state=seed).fit(z)
    centers = np.asarray(km.cluster_centers_, dtype=np.float64)
    return KMeansResult(labels=np.asarray(km.labels_, dtype=np.int64), centers=centers,
                        nearest=nearest_points(z, centers))


# --------------------------------------------------------------------------------------- traversals
def pc_traversal(p: PCA, component: int = 0, n: int = 10,
                 percentiles: tuple[float, float] = (5.0, 95.0)) -> tuple[np.ndarray, np.ndarray]:
    """``n`` latent points along principal component ``component`` (0-based): the mean plus the
    component times scores at evenly spaced percentiles of that component's scores, from
    ``percentiles[0]`` to ``percentiles[1]``. Returns ``(z points (n, L), scores (n,))``."""
    if not 0 <= component < p.components.shape[0]:
        raise InputError(f"PC traversal: component {component + 1} of {p.components.shape[0]}")
    values = np.percentile(p.scores[:, component], np.linspace(percentiles[0], percentiles[1], n))
    return p.mean + values[:, None] * p.components[component], values


def knn_graph(z: np.ndarray, k: int = 10):
    """Symmetric k-nearest-neighbour graph of ``z`` ``(N, L)``: a ``scipy.sparse`` ``(N, N)`` matrix
    whose entry ``(i, j)`` is the Euclidean distance when ``j`` is among the ``k`` nearest of ``i``
    or ``i`` among those of ``j``."""
    from scipy.sparse import coo_matrix
    from scipy.spatial import cKDTree

    z = check_z(z)
    n = z.shape[0]
    k = int(min(k, n - 1))
    dist, idx = cKDTree(z).query(z, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    d, c = dist[:, 1:].reshape(-1), idx[:, 1:].reshape(-1)
    d = np.maximum(d, 1e-12)  # a zero weight would read as "no edge" in a sparse matrix
    g = coo_matrix((d, (rows, c)), shape=(n, n)).tocsr()
    return g.maximum(g.T)


def graph_path(z: np.ndarray, start: int, end: int, k: int = 10) -> np.ndarray:
    """Particle indices ``(M,)`` of the shortest path from particle ``start`` to ``end`` in the
    k-nearest-neighbour graph of ``z`` (:func:`knn_graph`; Dijkstra, ``scipy.sparse.csgraph``), both
    ends included. Raises :class:`InputError` when they are not connected (raise ``k``)."""
    from scipy.sparse.csgraph import dijkstra

    z = check_z(z)
    n = z.shape[0]
    for name, i in (("start", start), ("end", end)):
        if not 0 <= int(i) < n:
            raise InputError(f"graph path: {name} particle {i} outside 0..{n - 1}")
    dist, pred = dijkstra(knn_graph(z, k), directed=False, indices=int(start), return_predecessors=True)
    if not np.isfinite(dist[int(end)]):
        raise InputError(f"graph path: particles {start} and {end} are not connected in the {k}-NN graph; "
                         "use more neighbours")
    path = [int(end)]
    while path[-1] != int(start):
        path.append(int(pred[path[-1]]))
    return np.asarray(path[::-1], dtype=np.int64)


# ------------------------------------------------------------------------------------------- subsets
def select_clusters(labels: np.ndarray, clusters: Sequence[int]) -> np.ndarray:
    """Indices (ascending) of the particles whose k-means label is in ``clusters``."""
    labels = np.asarray(labels)
    missing = sorted(set(int(c) for c in clusters) - set(np.unique(labels).tolist()))
    if missing:
        raise InputError(f"subset: cluster(s) {missing} do not exist (labels 0..{int(labels.max())})")
    return np.nonzero(np.isin(labels, np.asarray(list(clusters))))[0].astype(np.int64)


def select_pc_box(scores: np.ndarray, box: Mapping[int, tuple[float, float]]) -> np.ndarray:
    """Indices (ascending) of the particles inside a box in PC space: ``box = {component (0-based):
    (low, high)}``, inclusive bounds on the scores ``(N, k)``; components not named are unbounded."""
    scores = np.asarray(scores)
    keep = np.ones(scores.shape[0], dtype=bool)
    for c, (lo, hi) in box.items():
        if not 0 <= int(c) < scores.shape[1]:
            raise InputError(f"subset: PC {int(c) + 1} of {scores.shape[1]}")
        keep &= (scores[:, int(c)] >= lo) & (scores[:, int(c)] <= hi)
    return np.nonzero(keep)[0].astype(np.int64)


def write_subset(particles: Particles, indices: np.ndarray, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write the particles at ``indices`` (rows of ``particles``, i.e. of ``z``) as
    ``STEM.star`` (RELION 3.1) and ``STEM.cs`` (cryoSPARC); returns both paths."""
    from ..io.cryosparc import write_cs
    from ..io.star import write_star

    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise InputError(f"{stem}: the subset is empty")
    sub = particles.subset(idx)
    stem = Path(stem)
    return write_star(stem.with_suffix(".star"), sub), write_cs(stem.with_suffix(".cs"), sub)


# ------------------------------------------------------------------------------------------ decoding
def decode_maps(decode: Decode, z_points: np.ndarray, batch_size: int = 8,
                device: torch.device | str | None = None) -> np.ndarray:
    """Maps ``(M, D, D, D)`` float32 (real space, ``[z, y, x]``) of latent points ``(M, L)``,
    decoded ``batch_size`` at a time on ``device`` without gradients."""
    pts = np.asarray(z_points, dtype=np.float32)
    out = []
    with torch.no_grad():
        for s in range(0, len(pts), batch_size):
            v = decode(torch.as_tensor(pts[s:s + batch_size], device=device))
            out.append(v.detach().float().cpu().numpy())
    return np.concatenate(out)

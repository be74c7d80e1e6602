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
- :func:`analyze_latents` — all of the above into a run folder, with plots added to its report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.files import atomic_path
from ..io.mrc import write_volume
from ..io.particles import Particles
from ..io.runfolder import RunFolder
from . import latent_plots as lp

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


def _check_z(z) -> np.ndarray:
    z = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
        raise InputError(f"latents of shape {z.shape}: expected (N, L) with N ≥ 2")
    if not np.isfinite(z).all():
        raise InputError(f"latents: row {int(np.nonzero(~np.isfinite(z).all(1))[0][0])} (0-based) is not finite")
    return z


def pca(z: np.ndarray, n_components: int | None = None) -> PCA:
    """PCA of ``z`` ``(N, L)`` by SVD of the centred data in float64; ``n_components`` default ``L``
    (at most ``min(N, L)``)."""
    z = _check_z(z)
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
    z = _check_z(z)
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

    z = _check_z(z)
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

    z = _check_z(z)
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

    z = _check_z(z)
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


def _write_maps(folder: Path, maps: np.ndarray, pixel_size: float) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for j, v in enumerate(maps):
        write_volume(folder / f"vol_{j:03d}.mrc", v, pixel_size)
        names.append(f"vol_{j:03d}.mrc")
    return names


def _save_npy(path: Path, a: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(a), allow_pickle=False)


def _as_values(values, n: int) -> dict[str, np.ndarray]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        values = {"value": values}
    out = {}
    for name, v in values.items():
        a = np.asarray(v, dtype=np.float64).reshape(-1)
        if a.shape != (n,):
            raise InputError(f"per-image value {name!r}: {a.shape[0]} values for {n} particles")
        out[str(name)] = a
    return out


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


# ------------------------------------------------------------------------------------- the analysis
def analyze_latents(z: np.ndarray, decode: Decode | None, run: RunFolder | str | os.PathLike, pixel_size: float,
                    values: Mapping[str, np.ndarray] | np.ndarray | None = None,
                    particles: Particles | None = None, *, n_clusters: int = 20, n_pcs: int = 2,
                    n_traversal: int = 10, percentiles: tuple[float, float] = (5.0, 95.0),
                    path_ends: tuple[int, int] | None = None, n_path_maps: int = 10, n_neighbors: int = 10,
                    umap: bool = True, subset_clusters: Sequence[Sequence[int]] | None = None,
                    subset_pc_boxes: Sequence[Mapping[int, tuple[float, float]]] | None = None,
                    seed: int = 0, batch_size: int = 8, device: torch.device | str | None = None,
                    title: str | None = None, out_name: str = "analysis") -> dict:
    """Analyse latents ``z`` ``(N, L)`` (row ``i`` = particle ``i``) of a run and write the results.

    decode: ``z (B, L) float32 tensor → (B, D, D, D)`` real-space maps (or None: no maps).
    run: the run folder. pixel_size: Å/px of the decoded maps. values: per-image values ``(N,)``
    (e.g. ``{"hinge_angle_deg": ...}``) to colour the plots by and correlate with the PCs.
    particles: the particles ``z`` belongs to (``N`` rows), needed to write subsets.
    n_clusters: k-means ``K`` (cryoDRGN's default 20; capped at ``N``). n_pcs: components traversed.
    n_traversal: maps per traversal, at scores between ``percentiles`` of each component.
    path_ends: two particle indices joined by a graph path (default: the particles nearest to the
    ``percentiles`` ends of PC1); n_path_maps: maps decoded evenly along it; n_neighbors: of the graph.
    umap: compute the UMAP embedding (the first call compiles umap's kernels, ~15 s).
    subset_clusters: each entry a list of k-means clusters written as one subset.
    subset_pc_boxes: each entry ``{component (0-based): (low, high)}`` written as one subset.

    Writes into ``run/out_name/``: ``z.npy``, ``z_pca.npy`` (scores), ``pca_components.npy``,
    ``pca_mean.npy``, ``umap.npy``, ``kmeans_labels.npy``, ``kmeans_centers.npy``,
    ``kmeans_particles.npy`` (on-data particle per centre), ``path_particles.npy``, maps in
    ``kmeans/``, ``pc1/``, ``pc2/`` …, ``path/`` (``vol_000.mrc`` …, voxel size set), subsets
    ``subset_*.star`` / ``.cs`` and ``summary.json``; into ``run/``: ``latent_*.png`` plots, the
    ``latent_*`` numbers merged into ``metrics.json``, and ``report.html`` rewritten with them.
    Returns the summary (also in ``summary.json``).
    """
    from scipy.stats import spearmanr

    from .report import write_report

    z = _check_z(z)
    n, dim = z.shape
    vals = _as_values(values, n)
    if particles is not None and len(particles) != n:
        raise InputError(f"{particles.name}: {len(particles)} particles for {n} latent rows")
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    out = run.path(out_name)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"n_particles": n, "latent_dim": dim, "folder": out_name}
    _save_npy(out / "z.npy", z.astype(np.float32))

    # --- PCA ---
    p = pca(z)
    _save_npy(out / "z_pca.npy", p.scores.astype(np.float32))
    _save_npy(out / "pca_components.npy", p.components)
    _save_npy(out / "pca_mean.npy", p.mean)
    summary["explained_variance_ratio"] = p.explained_variance_ratio.tolist()
    pc_xy = p.scores[:, :2] if dim >= 2 else np.stack([p.scores[:, 0], np.zeros(n)], 1)
    pc_axes = ("PC1", "PC2" if dim >= 2 else "—")
    lp.plot_explained_variance(p.explained_variance_ratio, run.path("latent_pca_variance.png"))

    # --- per-image values: PC correlations and coloured plots ---
    metrics_add: dict = {}
    corr: dict = {}
    for name, v in vals.items():
        rho = [float(spearmanr(p.scores[:, c], v)[0]) for c in range(min(dim, 3))]
        corr[name] = {f"PC{c + 1}": r for c, r in enumerate(rho)}
        metrics_add[f"latent_spearman_pc1_{_slug(name)}"] = rho[0]
        lp.plot_embedding(pc_xy, run.path(f"latent_pca_{_slug(name)}.png"), color=v, color_label=name,
                          axis_labels=pc_axes, title=f"PCA of z coloured by {name}")
        lp.plot_value_scatter(v, p.scores[:, 0], run.path(f"latent_pc1_vs_{_slug(name)}.png"), name, "PC1",
                              title=f"Spearman ρ = {rho[0]:.3f}")
    summary["spearman"] = corr
    if not vals:
        lp.plot_embedding(pc_xy, run.path("latent_pca.png"), axis_labels=pc_axes, title="PCA of z")

    # --- UMAP ---
    emb = None
    if umap:
        emb = z[:, :2].astype(np.float32) if dim <= 2 else embed_umap(z, seed=seed)
        _save_npy(out / "umap.npy", emb)
        summary["umap"] = "umap.npy" if dim > 2 else "z itself (L ≤ 2, no embedding needed)"
        for name, v in vals.items():
            lp.plot_embedding(emb, run.path(f"latent_umap_{_slug(name)}.png"), color=v, color_label=name,
                              axis_labels=("UMAP1", "UMAP2"), title=f"UMAP of z coloured by {name}")
        if not vals:
            lp.plot_embedding(emb, run.path("latent_umap.png"), axis_labels=("UMAP1", "UMAP2"), title="UMAP of z")

    # --- k-means ---
    k = min(int(n_clusters), n)
    km = kmeans(z, k, seed=seed)
    _save_npy(out / "kmeans_labels.npy", km.labels)
    _save_npy(out / "kmeans_centers.npy", km.centers.astype(np.float32))
    _save_npy(out / "kmeans_particles.npy", km.nearest)
    summary["kmeans"] = {"k": k, "particles": km.nearest.tolist(),
                         "sizes": np.bincount(km.labels, minlength=k).tolist()}
    marks = [str(j) for j in range(k)]
    lp.plot_embedding(pc_xy, run.path("latent_pca_kmeans.png"), color=km.labels, categorical=True,
                      color_label="k-means", axis_labels=pc_axes, marks=pc_xy[km.nearest], mark_labels=marks,
                      title=f"PCA of z, {k} k-means clusters (× on-data centre particles)")
    if emb is not None:
        lp.plot_embedding(emb, run.path("latent_umap_kmeans.png"), color=km.labels, categorical=True,
                          color_label="k-means", axis_labels=("UMAP1", "UMAP2"), marks=emb[km.nearest],
                          mark_labels=marks, title=f"UMAP of z, {k} k-means clusters")
    for name, v in vals.items():  # how each cluster sits along the known coordinate
        summary["kmeans"][f"mean_{name}"] = [float(v[km.labels == j].mean()) for j in range(k)]

    # --- graph path ---
    lo, hi = percentiles
    if path_ends is None:
        ends = np.percentile(p.scores[:, 0], [lo, hi])
        path_ends = (int(np.argmin(np.abs(p.scores[:, 0] - ends[0]))), int(np.argmin(np.abs(p.scores[:, 0] - ends[1]))))
    path = graph_path(z, path_ends[0], path_ends[1], k=n_neighbors)
    _save_npy(out / "path_particles.npy", path)
    path_pick = path[np.unique(np.linspace(0, len(path) - 1, min(len(path), n_path_maps)).round().astype(int))]
    summary["path"] = {"ends": [int(path_ends[0]), int(path_ends[1])], "length": int(len(path)),
                       "decoded_particles": path_pick.tolist()}
    lp.plot_embedding(pc_xy, run.path("latent_pca_path.png"), color=None, axis_labels=pc_axes,
                      line=pc_xy[path], title=f"graph path ({n_neighbors}-NN) from particle {path_ends[0]} "
                                              f"to {path_ends[1]}")

    # --- traversals (points; maps below) ---
    traversals = []
    for c in range(min(int(n_pcs), dim)):
        pts, scores = pc_traversal(p, c, n_traversal, percentiles)
        traversals.append((c, pts, scores))
    summary["pc_traversals"] = {f"pc{c + 1}": {"scores": s.tolist(), "percentiles": [lo, hi]}
                                for c, _, s in traversals}

    # --- maps ---
    if decode is not None:
        maps = decode_maps(decode, z[km.nearest], batch_size, device)
        summary["kmeans"]["maps"] = [f"kmeans/{f}" for f in _write_maps(out / "kmeans", maps, pixel_size)]
        lp.plot_map_series(maps, run.path("latent_kmeans_maps.png"),
                           titles=[f"cluster {j}" for j in range(k)], max_columns=10)
        for c, pts, scores in traversals:
            maps = decode_maps(decode, pts, batch_size, device)
            files = _write_maps(out / f"pc{c + 1}", maps, pixel_size)
            summary["pc_traversals"][f"pc{c + 1}"]["maps"] = [f"pc{c + 1}/{f}" for f in files]
            lp.plot_map_series(maps, run.path(f"latent_pc{c + 1}_traversal.png"),
                               titles=[f"PC{c + 1}={s:.2f}" for s in scores])
        maps = decode_maps(decode, z[path_pick], batch_size, device)
        summary["path"]["maps"] = [f"path/{f}" for f in _write_maps(out / "path", maps, pixel_size)]
        lp.plot_map_series(maps, run.path("latent_path_maps.png"), titles=[f"#{i}" for i in path_pick])

    # --- subsets ---
    subsets = []
    if (subset_clusters or subset_pc_boxes) and particles is None:
        raise InputError("subsets in latent space need the particles (STAR/.cs) the latents belong to")
    for cl in subset_clusters or []:
        idx = select_clusters(km.labels, cl)
        stem = out / ("subset_kmeans_" + "-".join(str(int(c)) for c in cl))
        star, cs = write_subset(particles, idx, stem)
        subsets.append({"selection": {"kmeans": [int(c) for c in cl]}, "n": int(idx.size),
                        "star": star.name, "cs": cs.name})
    for j, box in enumerate(subset_pc_boxes or []):
        idx = select_pc_box(p.scores, box)
        star, cs = write_subset(particles, idx, out / f"subset_pcbox_{j}")
        subsets.append({"selection": {"pc_box": {f"PC{int(c) + 1}": list(b) for c, b in box.items()}},
                        "n": int(idx.size), "star": star.name, "cs": cs.name})
    summary["subsets"] = subsets

    run.write_json(f"{out_name}/summary.json", summary)
    metrics = run.read_json("metrics.json")
    metrics.update(metrics_add)
    metrics["latent_explained_variance_pc1"] = float(p.explained_variance_ratio[0])
    run.write_metrics(metrics)
    if title is None:
        cmd = run.read_json("config.json").get("command", "")
        title = f"cryolens {cmd}".strip() if cmd else "cryolens run"
    write_report(run.root, title, captions=_captions(vals))
    log.info("latent analysis of %d particles written to %s", n, out)
    return summary


def _captions(vals: Mapping[str, np.ndarray]) -> dict[str, str]:
    cap = {
        "latent_pca_variance.png": "fraction of the latent variance per principal component",
        "latent_pca.png": "PCA of the latents", "latent_umap.png": "UMAP of the latents",
        "latent_pca_kmeans.png": "PCA of the latents by k-means cluster (× the particle decoded for each)",
        "latent_umap_kmeans.png": "UMAP of the latents by k-means cluster",
        "latent_kmeans_maps.png": "maps of the on-data particles nearest the k-means centres (projections)",
        "latent_pca_path.png": "shortest path between two particles through the k-NN graph of the latents",
        "latent_path_maps.png": "maps along the graph path (projections)",
        "latent_pc1_traversal.png": "maps along PC1 (projections)",
        "latent_pc2_traversal.png": "maps along PC2 (projections)",
    }
    for name in vals:
        s = _slug(name)
        cap[f"latent_pca_{s}.png"] = f"PCA of the latents coloured by {name}"
        cap[f"latent_umap_{s}.png"] = f"UMAP of the latents coloured by {name}"
        cap[f"latent_pc1_vs_{s}.png"] = f"PC1 against {name}"
    return cap


def load_values(path: str | os.PathLike, n: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per-image values for colouring: a ``.npy`` ``(N,)`` (named after the file), a ``.npz`` or a
    ``.json`` ``{name: [N values]}``. ``keys``: the arrays to take (each must be ``(N,)`` numeric);
    default every numeric ``(N,)`` array that is not constant (e.g. of a simulated dataset's
    ``ground_truth.npz``: the hinge angle, the state labels, the defocus)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: not found")
    try:
        if p.suffix == ".npy":
            d = {p.stem: np.load(p, allow_pickle=False)}
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                d = {k: f[k] for k in f.files}
        elif p.suffix == ".json":
            d = {k: np.asarray(v) for k, v in json.loads(p.read_text()).items()}
        else:
            raise InputError(f"{p}: per-image values must be .npy, .npz or .json")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{p}: not readable ({' '.join(str(e).split())})") from None
    if keys is not None:
        for k in keys:
            if k not in d or np.asarray(d[k]).shape != (n,) or np.asarray(d[k]).dtype.kind not in "biuf":
                raise InputError(f"{p}: no numeric array {k!r} of {n} values (one per particle)")
        return {k: np.asarray(d[k], dtype=np.float64) for k in keys}
    out = {k: np.asarray(v, dtype=np.float64) for k, v in d.items()
           if np.asarray(v).shape == (n,) and np.asarray(v).dtype.kind in "biuf" and np.ptp(np.asarray(v)) > 0}
    if not out:
        raise InputError(f"{p}: holds no numeric array of {n} values (one per particle)")
    return out

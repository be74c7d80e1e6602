"""``cryolens analyze``: every latent-space analysis of :mod:`.latent` into a run folder — PCA and UMAP
plots, k-means centres and PC traversals decoded to maps, a graph path between particles, subsets as
STAR/``.cs`` — with the per-image values a user gives (a ground-truth coordinate, say) shown beside them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.files import atomic_path
from ..io.mrc import write_volume
from ..io.particles import Particles
from ..io.runfolder import RunFolder
from . import latent_plots as lp
from .latent import (Decode, check_z, decode_maps, embed_umap, graph_path, kmeans, pc_traversal, pca,
                     select_clusters, select_pc_box, write_subset)

log = logging.getLogger(__name__)


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

    z = check_z(z)
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
            lp.animate_map_series(maps, run.path(f"latent_pc{c + 1}_traversal.gif"))
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
        "latent_pc1_traversal.gif": "maps along PC1 and back (central sections z, y, x; animated)",
        "latent_pc2_traversal.gif": "maps along PC2 and back (central sections z, y, x; animated)",
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

"""PNG plots of a latent space: 2D embeddings coloured by a per-image value or a cluster label, the
explained variance of the principal components, and series of maps (k-means centres, traversals), also as an
animated GIF of central sections.

Every function takes plain arrays and a path, writes the PNG (GIF) atomically and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.files import atomic_path
from .mpl import _save, plt


def plot_embedding(xy: np.ndarray, path: str | os.PathLike, color: np.ndarray | None = None,
                   color_label: str = "", categorical: bool = False, axis_labels: tuple[str, str] = ("1", "2"),
                   title: str = "", marks: np.ndarray | None = None, mark_labels: list[str] | None = None,
                   line: np.ndarray | None = None) -> Path:
    """Scatter of a 2D embedding ``xy`` ``(N, 2)``.

    color: ``(N,)`` per-image value (colour bar) or, with ``categorical``, integer labels (one colour
    each, legend). marks: ``(K, 2)`` points drawn as labelled crosses (e.g. k-means centres).
    line: ``(M, 2)`` a path drawn through the points in order (e.g. a graph path).
    """
    xy = np.asarray(xy, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    size = max(1.0, min(12.0, 4000.0 / max(len(xy), 1)))
    if color is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c="#3a6ea5", alpha=0.5, linewidths=0)
    elif categorical:
        labels = np.asarray(color).astype(np.int64)
        cmap = plt.get_cmap("tab20")
        for j, lab in enumerate(np.unique(labels)):
            sel = labels == lab
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(j % 20), alpha=0.6, linewidths=0,
                       label=str(lab))
        if len(np.unique(labels)) <= 20:
            ax.legend(title=color_label, fontsize=6, title_fontsize=7, markerscale=2, loc="best", ncol=2)
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=np.asarray(color, dtype=np.float64), cmap="viridis",
                        alpha=0.7, linewidths=0)
        fig.colorbar(sc, ax=ax, label=color_label)
    if line is not None:
        line = np.asarray(line, dtype=np.float64)
        ax.plot(line[:, 0], line[:, 1], "-o", color="#d62728", lw=1.2, ms=2.5)
    if marks is not None:
        marks = np.asarray(marks, dtype=np.float64)
        ax.scatter(marks[:, 0], marks[:, 1], marker="x", s=40, c="k", linewidths=1.4)
        for j, (x, y) in enumerate(marks):
            ax.annotate(mark_labels[j] if mark_labels else str(j), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_explained_variance(ratio: np.ndarray, path: str | os.PathLike) -> Path:
    """Bar chart of the fraction of the latent variance carried by each principal component."""
    ratio = np.asarray(ratio, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(np.arange(1, len(ratio) + 1), ratio, color="#3a6ea5")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_xticks(np.arange(1, len(ratio) + 1))
    return _save(fig, path)


def plot_value_scatter(x: np.ndarray, y: np.ndarray, path: str | os.PathLike, xlabel: str, ylabel: str,
                       title: str = "") -> Path:
    """Scatter of one per-image quantity against another (e.g. a ground-truth coordinate vs PC1)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.scatter(np.asarray(x), np.asarray(y), s=max(1.0, min(10.0, 3000.0 / max(len(x), 1))), alpha=0.5,
               linewidths=0, c="#3a6ea5")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_map_series(volumes: np.ndarray, path: str | os.PathLike, titles: list[str] | None = None,
                    max_columns: int = 10) -> Path:
    """Projections of a series of maps ``(M, D, D, D)`` ``[z, y, x]``: along z (top row) and along x
    (bottom row), one column per map (at most ``max_columns``, evenly chosen), on a shared grey scale
    per row so that changes between maps show."""
    vols = np.asarray(volumes, dtype=np.float32)
    pick = np.unique(np.linspace(0, len(vols) - 1, min(len(vols), max_columns)).round().astype(int))
    proj = [vols[pick].sum(axis=1), vols[pick].sum(axis=3)]  # along z → [y, x]; along x → [z, y]
    fig, axes = plt.subplots(2, len(pick), figsize=(1.6 * len(pick) + 0.4, 3.5), squeeze=False)
    for row, p in enumerate(proj):
        lo, hi = float(p.min()), float(p.max())
        for c, j in enumerate(pick):
            ax = axes[row, c]
            ax.imshow(p[c], cmap="gray", origin="lower", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[j] if titles else str(j), fontsize=7)
    axes[0, 0].set_ylabel("along z", fontsize=7)
    axes[1, 0].set_ylabel("along x", fontsize=7)
    return _save(fig, path)


def animate_map_series(volumes: np.ndarray, path: str | os.PathLike, scale: int = 3, frame_ms: int = 200) -> Path:
    """An animated GIF of a series of maps ``(M, D, D, D)`` ``[z, y, x]`` (e.g. a latent traversal): frame ``j``
    shows map ``j``'s three central sections side by side — ``z = D/2`` (``[y, x]``), ``y = D/2`` (``[z, x]``),
    ``x = D/2`` (``[z, y]``), row 0 at the bottom as in the PNG plots — on one grey scale shared by every frame,
    each pixel enlarged ``scale`` × (nearest); the series plays forward then back (``2M − 2`` frames for
    ``M ≥ 2``), ``frame_ms`` ms per frame, looping. Written atomically (Pillow); returns ``path``."""
    from PIL import Image

    vols = np.asarray(volumes, dtype=np.float32)
    c = vols.shape[-1] // 2
    panels = np.concatenate([vols[:, c], vols[:, :, c], vols[:, :, :, c]], axis=-1)  # (M, D, 3D)
    lo, hi = float(panels.min()), float(panels.max())
    grey = np.round(255 * (panels - lo) / (hi - lo if hi > lo else 1.0)).astype(np.uint8)[:, ::-1]
    grey = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    order = list(range(len(grey))) + list(range(len(grey) - 2, 0, -1))
    frames = [Image.fromarray(grey[j], mode="L") for j in order]
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path

"""PNG plots a practitioner reads: FSC curves, central sections, particles with their CTFs.

Every plot function takes plain arrays and a path, writes the PNG atomically and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.files import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_fsc(curves: dict[str, np.ndarray], pixel_size: float, box: int, path: str | os.PathLike,
             thresholds: dict[str, float] | None = None, title: str = "Fourier shell correlation") -> Path:
    """FSC curves (each ``(D//2+1,)`` over shells) against resolution; dashed threshold lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves.items():
        k = np.arange(len(c)) / (box * pixel_size)  # 1/Å
        ax.plot(k, c, label=label, lw=1.6)
    for label, t in (thresholds or {"0.143": 0.143, "0.5": 0.5}).items():
        ax.axhline(t, ls="--", lw=0.8, color="gray")
        ax.text(0, t + 0.01, label, fontsize=7, color="gray")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    top = ax.twiny()  # resolution labels (Å) over the frequency ticks
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if t > 0 and ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{1 / t:.1f}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10, y=1.06)
    return _save(fig, path)


def plot_sections(volumes: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Central z, y and x sections (rows) of each volume (columns); each volume ``(D, D, D)`` ``[z, y, x]``."""
    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for row, (label, v) in enumerate(volumes.items()):
        v = np.asarray(v)
        c = v.shape[0] // 2
        for col, (name, sec) in enumerate((("z", v[c]), ("y", v[:, c]), ("x", v[:, :, c]))):
            ax = axes[row, col]
            ax.imshow(sec, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}: central {name} section", fontsize=8)
    return _save(fig, path)


def _tile_rgb(x: np.ndarray, cmap: str, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``(D, D)`` → ``(D, D, 3)`` colours of ``cmap`` over ``[lo, hi]`` (default: the tile's own range)."""
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    return matplotlib.colormaps[cmap](np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1))[..., :3]


def particle_mosaic(images: np.ndarray, ctfs: np.ndarray | None) -> tuple[np.ndarray, int]:
    """``(mosaic (H, W, 3) RGB in [0, 1], gap px)``: the particles ``(n, D, D)`` side by side (each on its own
    grey scale) and, below them, their CTFs on ``RdBu_r`` over −1 … 1; rows ordered for ``origin="lower"``
    (the particles are the last array rows, shown on top), tiles ``gap`` px apart on white."""
    n, d = len(images), images.shape[-1]
    gap = max(1, d // 16)
    rows = [[_tile_rgb(im, "gray") for im in images]]
    if ctfs is not None:
        rows.append([_tile_rgb(c, "RdBu_r", -1.0, 1.0) for c in ctfs])
    height = len(rows) * d + (len(rows) - 1) * gap
    mosaic = np.ones((height, n * d + (n - 1) * gap, 3))
    for r, row in enumerate(rows):
        y = height - (r + 1) * d - r * gap
        for i, tile in enumerate(row):
            mosaic[y:y + d, i * (d + gap):i * (d + gap) + d] = tile
    return mosaic, gap


def plot_particles(images: np.ndarray, ctfs: np.ndarray | None, path: str | os.PathLike,
                   titles: list[str] | None = None) -> Path:
    """A few particles (top row) and their CTFs (bottom row, labelled below): :func:`particle_mosaic` in one
    axes, ``origin="lower"`` (a subplot per tile cost ~0.5 s of every run folder)."""
    n, d = len(images), images.shape[-1]
    mosaic, gap = particle_mosaic(images, ctfs)
    fig, ax = plt.subplots(figsize=(2.0 * n, 2.1 * (1 + (ctfs is not None))))
    ax.imshow(mosaic, origin="lower", interpolation="nearest")
    for i in range(n):
        x = i * (d + gap) + d / 2
        ax.text(x, mosaic.shape[0] + gap, titles[i] if titles else f"particle {i}", fontsize=7, ha="center",
                va="bottom")
        if ctfs is not None:
            ax.text(x, -gap, "CTF", fontsize=7, ha="center", va="top")
    ax.set_axis_off()
    return _save(fig, path)


def plot_histogram(values: np.ndarray, path: str | os.PathLike, xlabel: str, title: str = "") -> Path:
    """A histogram of per-image values (e.g. pose errors in degrees)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(np.asarray(values), bins=50, color="#3a6ea5")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, path)

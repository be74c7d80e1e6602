"""PNG plots a practitioner reads: FSC curves, central sections, particles with their CTFs.

Every plot function takes plain arrays and a path, writes the PNG atomically and returns the path. The three
plots of every run folder are drawn with Pillow (:mod:`cryolens.analysis.raster`: no matplotlib import, ~0.6 s
of a short command); the histogram with matplotlib, imported when it is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .raster import TAB10, Canvas, colormap, nice_ticks


def _decimals(step: float) -> int:
    """Decimals that tell ticks ``step`` (1, 2 or 5 × 10ⁿ) apart."""
    return max(0, -int(np.floor(np.log10(step) + 1e-9)))


def plot_fsc(curves: dict[str, np.ndarray], pixel_size: float, box: int, path: str | os.PathLike,
             thresholds: dict[str, float] | None = None, title: str = "Fourier shell correlation") -> Path:
    """FSC curves (each ``(D//2+1,)`` over shells) against spatial frequency (1/Å, bottom axis; resolution in Å on
    the top axis); dashed threshold lines (default 0.143 and 0.5); a legend."""
    cv = Canvas(660, 470)
    left, right, top, bottom = 64.0, 640.0, 84.0, 410.0
    kmax = max((len(c) - 1) / (box * pixel_size) for c in curves.values()) if curves else 0.5 / pixel_size
    span = kmax or 1.0
    x0, x1, y0, y1 = -0.05 * span, kmax + 0.05 * span, -0.1, 1.05

    def at(x, y):
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (np.clip(y, y0, y1) - y0) / (y1 - y0) * (
            bottom - top)

    xt = nice_ticks(max(x0, 0.0), x1)
    nd = _decimals(float(xt[1] - xt[0])) if len(xt) > 1 else 2
    for t in xt:
        x, _ = at(t, y0)
        cv.line([(x, bottom), (x, bottom + 4)])
        cv.text((x, bottom + 7), f"{t:.{nd}f}", 11, "ma")
        if t > 0:
            cv.line([(x, top), (x, top - 4)])
            cv.text((x, top - 7), f"{1 / t:.1f}", 11, "md")
    for t in nice_ticks(y0, y1, 7):
        _, y = at(x0, t)
        cv.line([(left, y), (left - 4, y)])
        cv.text((left - 7, y), f"{t:.1f}", 11, "rm")
    for label, t in (thresholds or {"0.143": 0.143, "0.5": 0.5}).items():
        cv.line([at(x0, t), at(x1, t)], "gray", 1.0, dashed=True)
        cv.text(at(0.0, t + 0.01), label, 10, "ld", "gray")
    for i, c in enumerate(curves.values()):
        k = np.arange(len(c)) / (box * pixel_size)
        cv.line([at(float(a), float(b)) for a, b in zip(k, np.asarray(c, dtype=float))], TAB10[i % 10], 2.0)
    cv.rect((left, top, right, bottom))
    if curves:  # the legend, top right inside the axes
        w = 40 + 7 * max(len(s) for s in curves)
        lx, ly = right - w - 8, top + 8
        cv.rect((lx, ly, right - 8, ly + 8 + 17 * len(curves)), "#cccccc", 1.0, "white")
        for i, label in enumerate(curves):
            y = ly + 13 + 17 * i
            cv.line([(lx + 6, y), (lx + 28, y)], TAB10[i % 10], 2.0)
            cv.text((lx + 34, y), label, 11, "lm")
    cv.text(((left + right) / 2, 462), "spatial frequency (1/Å)", 13, "md")
    cv.text((16, (top + bottom) / 2), "FSC", 13, "mm", angle=90)
    cv.text(((left + right) / 2, top - 26), "resolution (Å)", 13, "md")
    cv.text(((left + right) / 2, 8), title, 14, "ma")
    return cv.save(path)


def plot_sections(volumes: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Central z, y and x sections (columns) of each volume (rows), each on its own grey scale with row 0 at the
    bottom (matplotlib's ``origin="lower"``); each volume ``(D, D, D)`` ``[z, y, x]``."""
    tile, pad, head = 240, 14, 20
    n = len(volumes)
    cv = Canvas(3 * tile + 4 * pad, n * (tile + head + pad) + pad)
    for row, (label, v) in enumerate(volumes.items()):
        v = np.asarray(v, dtype=np.float64)
        c = v.shape[0] // 2
        for col, (name, sec) in enumerate((("z", v[c]), ("y", v[:, c]), ("x", v[:, :, c]))):
            x = pad + col * (tile + pad)
            y = pad + row * (tile + head + pad) + head
            lo, hi = float(sec.min()), float(sec.max())
            cv.picture(colormap("gray", (sec[::-1] - lo) / max(hi - lo, 1e-12)), (x, y, x + tile, y + tile))
            cv.text((x + tile / 2, y - 4), f"{label}: central {name} section", 12, "md")
    return cv.save(path)


def _tile_rgb(x: np.ndarray, cmap: str, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``(D, D)`` → ``(D, D, 3)`` colours of ``cmap`` over ``[lo, hi]`` (default: the tile's own range)."""
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    return colormap(cmap, (x - lo) / max(hi - lo, 1e-12))


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
    """A few particles (top row) and their CTFs (bottom row, labelled below): :func:`particle_mosaic`, shown with
    its row 0 at the bottom."""
    n, d = len(images), images.shape[-1]
    mosaic, gap = particle_mosaic(images, ctfs)
    scale = 160.0 / d  # output pixels per image pixel
    pad, head = 12.0, 18.0
    w, h = mosaic.shape[1] * scale, mosaic.shape[0] * scale
    cv = Canvas(int(w + 2 * pad), int(h + 2 * head + 2 * pad), supersample=2)  # mostly pixels: 2 is enough
    cv.picture(mosaic[::-1], (pad, pad + head, pad + w, pad + head + h))
    for i in range(n):
        x = pad + (i * (d + gap) + d / 2) * scale
        cv.text((x, pad + head - 3), titles[i] if titles else f"particle {i}", 11, "md")
        if ctfs is not None:
            cv.text((x, pad + head + h + 3), "CTF", 11, "ma")
    return cv.save(path)


def plot_histogram(values: np.ndarray, path: str | os.PathLike, xlabel: str, title: str = "") -> Path:
    """A histogram of per-image values (e.g. pose errors in degrees)."""
    from .mpl import _save, plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(np.asarray(values), bins=50, color="#3a6ea5")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _save(fig, path)

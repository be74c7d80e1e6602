"""Plots of EM runs (refinement, classification): FSC per iteration, resolution and sampling against
iteration, the distribution of view directions, class populations.

Every function takes plain arrays (or the per-iteration ``history`` dicts of
:func:`~cryolens.inference.autorefine.auto_refine`), writes a PNG atomically and returns its path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .mpl import _save, plt


def plot_fsc_iterations(history: list[dict], pixel_size: float, box: int, path: str | os.PathLike,
                        key: str = "fsc", max_curves: int = 8) -> Path:
    """Half-map FSC of each iteration (``history[i][key]``, ``(D//2+1,)``) against spatial frequency,
    lighter for earlier iterations (at most ``max_curves``, evenly picked, the last always)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    n = len(history)
    pick = sorted(set(np.linspace(0, n - 1, min(n, max_curves)).round().astype(int).tolist())) if n else []
    cmap = plt.get_cmap("viridis")
    for j, i in enumerate(pick):
        c = np.asarray(history[i][key], dtype=float)
        k = np.arange(len(c)) / (box * pixel_size)
        ax.plot(k, c, color=cmap(j / max(1, len(pick) - 1)), lw=1.4, label=f"iteration {history[i]['iteration']}")
    ax.axhline(0.143, ls="--", lw=0.8, color="gray")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("half-map FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("gold-standard FSC by iteration", fontsize=10)
    return _save(fig, path)


def plot_resolution_history(history: list[dict], path: str | os.PathLike, pixel_size: float | None = None) -> Path:
    """Half-map resolution (Å, FSC 0.143) and the angular step (°) against iteration; local-search
    iterations are marked with filled circles."""
    it = np.array([h["iteration"] for h in history])
    res = np.array([h["resolution_A"] for h in history], dtype=float)
    step = np.array([h["angular_step_deg"] for h in history], dtype=float)
    local = np.array([bool(h.get("local", False)) for h in history])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(it, res, "-", color="C0", lw=1.5)
    ax.plot(it[~local], res[~local], "o", mfc="white", color="C0", label="global search")
    ax.plot(it[local], res[local], "o", color="C0", label="local search")
    if pixel_size:
        ax.axhline(2 * pixel_size, ls=":", color="gray", lw=0.8)
        ax.text(it.min() if len(it) else 0, 2 * pixel_size, " Nyquist", fontsize=7, color="gray", va="bottom")
    ax.set_xlabel("iteration")
    ax.set_ylabel("resolution (Å), FSC 0.143", color="C0")
    ax.invert_yaxis()
    ax2 = ax.twinx()
    ax2.step(it, step, where="mid", color="C3", lw=1.2)
    ax2.set_ylabel("angular step (°)", color="C3")
    ax2.set_yscale("log")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("resolution and sampling by iteration", fontsize=10)
    return _save(fig, path)


def plot_angular_distribution(rotations: np.ndarray, path: str | os.PathLike, bins: tuple[int, int] = (72, 36),
                              title: str = "view directions") -> Path:
    """2D histogram of view directions ``R ẑ`` (the projection axis in the volume frame) over
    azimuth (rlnAngleRot, −180…180°) and polar angle (rlnAngleTilt, 0…180°), with sin(tilt) area
    correction so that uniform views give a flat map. rotations: ``(N, 3, 3)`` image → volume frame."""
    r = np.asarray(rotations, dtype=np.float64)
    v = r[:, :, 2]
    rot = np.degrees(np.arctan2(v[:, 1], v[:, 0]))
    tilt = np.degrees(np.arccos(np.clip(v[:, 2], -1, 1)))
    h, xe, ye = np.histogram2d(rot, tilt, bins=bins, range=[[-180, 180], [0, 180]])
    centres = np.radians(0.5 * (ye[1:] + ye[:-1]))
    density = h / np.maximum(np.sin(centres)[None, :], 1e-3)
    density = density / max(density.mean(), 1e-12)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    im = ax.imshow(density.T, origin="lower", extent=[-180, 180, 0, 180], aspect="auto", cmap="magma")
    fig.colorbar(im, ax=ax, label="density / mean")
    ax.set_xlabel("rot (°)")
    ax.set_ylabel("tilt (°)")
    ax.set_title(f"{title} (N = {len(r)})", fontsize=10)
    return _save(fig, path)


def plot_class_populations(populations: np.ndarray, path: str | os.PathLike) -> Path:
    """Class populations against iteration: ``populations (iterations, K)`` fractions."""
    p = np.atleast_2d(np.asarray(populations, dtype=float))
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in range(p.shape[1]):
        ax.plot(np.arange(1, p.shape[0] + 1), p[:, k], "o-", ms=3, label=f"class {k + 1}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("population")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("class populations", fontsize=10)
    return _save(fig, path)

"""Benchmark plots: FSC curves per method, pose-error histograms, latent spaces coloured by the
ground truth, resolution against SNR, training curves, and the spread of a sweep.

Each function takes plain arrays / dicts and a path, writes one PNG atomically (``analysis.plots._save``)
and returns the path.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .mpl import _save, plt
from .plots import plot_fsc

__all__ = ["plot_fsc", "plot_pose_errors", "plot_latents", "plot_resolution_vs_snr", "plot_training_curves",
           "plot_sweep", "plot_error_injection", "plot_auc_histogram", "plot_score_vs_time"]


def plot_pose_errors(errors: dict[str, np.ndarray], path: str | os.PathLike, title: str = "pose error") -> Path:
    """Overlaid histograms of per-image rotation errors (degrees, after global alignment), one per label."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    top = max([float(np.max(e)) for e in errors.values() if len(e)] + [1.0])
    bins = np.linspace(0, min(180.0, top * 1.02), 50)
    for label, e in errors.items():
        ax.hist(np.asarray(e), bins=bins, histtype="step", lw=1.5,
                label=f"{label} (median {np.median(e):.1f}°)")
    ax.set_xlabel("rotation error after alignment (degrees)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _pca2(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.shape[1] == 1:
        return np.hstack([z, np.zeros_like(z)])
    c = z - z.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return c @ vt[:2].T


def plot_latents(latents: np.ndarray, values: np.ndarray, path: str | os.PathLike, label: str = "ground truth",
                 title: str = "latent space", discrete: bool = False) -> Path:
    """Latents ``(N, L)`` on their first two principal components, coloured by the ground truth
    ``values (N,)`` (a continuous coordinate, or class labels with ``discrete``)."""
    p = _pca2(latents)
    fig, ax = plt.subplots(figsize=(5, 4))
    sc = ax.scatter(p[:, 0], p[:, 1], c=np.asarray(values), s=5, cmap="tab10" if discrete else "viridis")
    fig.colorbar(sc, ax=ax, label=label)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_resolution_vs_snr(series: dict[str, tuple[list[float], list[float]]], path: str | os.PathLike,
                           ylabel: str = "resolution vs ground truth (Å, FSC 0.5)",
                           title: str = "resolution against SNR") -> Path:
    """One line per method: ``{label: (snrs, resolutions Å)}``; log SNR axis, infinite values dropped."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in sorted(series.items()):
        pts = sorted((a, b) for a, b in zip(x, y) if b is not None and math.isfinite(b))
        if pts:
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("SNR")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_training_curves(records: list[dict], path: str | os.PathLike, x_key: str | None = None) -> Path | None:
    """Every numeric key of a ``log.jsonl`` (one dict per line) against the step (``x_key``, else the
    first of ``epoch``/``iteration``/``step`` present, else the line number); one panel per key."""
    if not records:
        return None
    keys = [k for k in records[0] if k != x_key and all(isinstance(r.get(k), (int, float)) and
                                                          not isinstance(r.get(k), bool) for r in records)]
    if x_key is None:
        x_key = next((k for k in ("epoch", "iteration", "iter", "step") if k in keys), None)
    keys = [k for k in keys if k != x_key][:8]
    if not keys:
        return None
    x = [r[x_key] for r in records] if x_key else list(range(len(records)))
    n = len(keys)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        ax.plot(x, [r[k] for r in records], lw=1.4)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x_key or "record")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(values: list, metrics: dict[str, list[list[float]]], path: str | os.PathLike, param: str,
               title: str = "sweep") -> Path:
    """Spread of metrics over seeds: for each metric a panel with every seed's value (dots) and the
    mean ± standard deviation (line, bars) against the swept ``values``. ``metrics[name][i]`` holds the
    seeds' values at ``values[i]``."""
    n = max(1, len(metrics))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    xs = np.arange(len(values))
    for ax, (name, per_value) in zip(axes[0], metrics.items()):
        means, stds = [], []
        for i, seeds in enumerate(per_value):
            s = np.asarray([v for v in seeds if v is not None and math.isfinite(v)], dtype=float)
            ax.scatter(np.full(len(s), xs[i]), s, s=12, color="gray", zorder=3)
            means.append(s.mean() if len(s) else np.nan)
            stds.append(s.std() if len(s) else np.nan)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, lw=1.5)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in values])
        ax.set_xlabel(param)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_error_injection(series: dict[str, tuple[list[float], list[float]]], path: str | os.PathLike,
                         title: str = "effect of nuisance-variable errors") -> Path:
    """One panel per injected error kind: ``{kind: (error sizes, resolutions Å)}``."""
    n = max(1, len(series))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    for ax, (kind, (x, y)) in zip(axes[0], series.items()):
        ax.plot(x, y, marker="o")
        ax.set_xlabel(kind)
        ax.set_ylabel("resolution vs ground truth (Å, FSC 0.5)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_auc_histogram(aucs: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Histograms of per-image FSC-AUC (0.5 = the image's true map) per label."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(-0.05, 0.5, 45)
    for label, a in aucs.items():
        ax.hist(np.asarray(a), bins=bins, histtype="step", lw=1.5, label=f"{label} (mean {np.mean(a):.3f})")
    ax.set_xlabel("per-image FSC-AUC vs ground truth")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_score_vs_time(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, ylabel: str,
                       title: str = "score against wall time", marks_s=(60.0, 300.0, 1200.0)) -> Path:
    """One step line per method, ``{label: (wall seconds (T,), scores (T,))}`` time-ordered (a score holds
    until the next point), on a log time axis in minutes with dotted lines at ``marks_s``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (t, v) in sorted(curves.items()):
        if len(t):
            ax.step(np.asarray(t) / 60.0, v, where="post", marker="o", ms=4, label=label)
    for m in marks_s:
        ax.axvline(m / 60.0, color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("wall time since the method started (min)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)

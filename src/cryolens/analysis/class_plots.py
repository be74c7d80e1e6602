"""Per-iteration plots of classification and ab initio runs: class populations, resolution and
log-likelihood against iteration, and central sections of every class map.

Each function takes plain lists / arrays and a path, writes the PNG atomically and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .mpl import _save, plt
from .plots import plot_sections


def plot_class_populations(history: list[dict], path: str | os.PathLike, key: str = "class_prior") -> Path:
    """Fraction of the particles in each class (``history[i][key]``, a list of ``K`` numbers) per iteration."""
    it = [h["iteration"] for h in history]
    pops = np.asarray([h[key] for h in history], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for k in range(pops.shape[1]):
        ax.plot(it, pops[:, k], marker="o", ms=3, label=f"class {k + 1}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("class population")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("class populations")
    return _save(fig, path)


def plot_history(history: list[dict], keys: dict[str, str], path: str | os.PathLike, title: str = "",
                 ylabel: str = "") -> Path:
    """Curves ``history[i][key]`` against ``history[i]["iteration"]`` for each ``{key: label}``
    (entries without the key are skipped)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key, label in keys.items():
        pts = [(h["iteration"], h[key]) for h in history if key in h and h[key] is not None]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_class_sections(volumes: np.ndarray, path: str | os.PathLike, populations=None) -> Path:
    """Central sections of each class map ``(K, D, D, D)``, titled with their populations if given."""
    named = {}
    for k, v in enumerate(np.asarray(volumes)):
        name = f"class {k + 1}" + (f" ({100 * populations[k]:.0f} %)" if populations is not None else "")
        named[name] = v
    return plot_sections(named, path)

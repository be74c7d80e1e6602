"""Training-curve plots from a run's ``log.jsonl`` (:mod:`cryolens.inference.engine`): every loss term
per step (light) with its per-epoch mean (dark), one panel per term, so a reader can see whether the
run has converged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .mpl import _save, plt


def epoch_means(records: list[dict]) -> dict[str, np.ndarray]:
    """Per-epoch mean of every numeric term of the step records → ``{term: (n_epochs,)}``, plus
    ``"epoch"`` (the epoch numbers, 1-based)."""
    steps = [r for r in records if not r.get("epoch_end")]
    epochs = sorted({int(r["epoch"]) for r in steps})
    terms = [k for k in (steps[0] if steps else {}) if k not in ("epoch", "step")]
    out = {"epoch": np.asarray(epochs, dtype=float)}
    for t in terms:
        out[t] = np.asarray([np.mean([r[t] for r in steps if int(r["epoch"]) == e and t in r]) for e in epochs])
    return out


def plot_training_curves(records: list[dict], path: str | os.PathLike, title: str = "training") -> Path:
    """One panel per loss term: value per step and per-epoch mean against epochs (linear axes: a log axis
    tripled the drawing time, and adversarial losses are signed)."""
    steps = [r for r in records if not r.get("epoch_end")]
    means = epoch_means(records)
    terms = [k for k in means if k != "epoch"]
    fig, axes = plt.subplots(1, max(len(terms), 1), figsize=(4.2 * max(len(terms), 1), 3.2), squeeze=False)
    n_per_epoch = {}
    for r in steps:
        n_per_epoch[int(r["epoch"])] = n_per_epoch.get(int(r["epoch"]), 0) + 1
    for ax, t in zip(axes[0], terms):
        vals = np.asarray([r[t] for r in steps if t in r], dtype=float)
        # x of each step in epochs: epoch − 1 + position within the epoch
        pos, seen = [], {}
        for r in steps:
            if t in r:
                e = int(r["epoch"])
                seen[e] = seen.get(e, 0) + 1
                pos.append(e - 1 + seen[e] / n_per_epoch[e])
        ax.plot(pos, vals, color="tab:blue", alpha=0.25, lw=0.6, label="step")
        ax.plot(means["epoch"], means[t], "o-", color="tab:blue", ms=3, label="epoch mean")
        ax.set_xlabel("epoch")
        ax.set_title(t)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_log_curves(records: list[dict], path: str | os.PathLike) -> Path | None:
    """The training curves of a ``log.jsonl``: a log of the training engine (step records with loss terms
    and ``epoch_end`` records) by :func:`plot_training_curves` (every loss term, e.g. a GAN's generator and
    critic losses and Wasserstein estimate); any other log by
    :func:`~cryolens.analysis.bench_plots.plot_training_curves` (every key numeric in every record)."""
    if any(r.get("epoch_end") for r in records) and any(not r.get("epoch_end") for r in records):
        return plot_training_curves(records, path)
    from .bench_plots import plot_training_curves as plot_any

    return plot_any(records, path)

"""Where each ground-truth state of a hinge set sits in a trained latent: for each ``z`` file, PC1 against PC2 (or
``z`` against the hinge angle when ``z`` is one-dimensional), every image coloured by its hinge angle and the state
means joined in order, with |Spearman(PC1, angle)| in the title. One panel per file, one PNG.

  PYTHONPATH=src .venv/bin/python benchmarks/plot_latent_states.py DATA z_a.npy:"e2gmm zdim 4" \\
      z_b.npy:"e2gmm zdim 1" --out benchmarks/RESULTS_plots/latent_states.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from continuous_dataset import ground_truth_maps  # noqa: E402


def main() -> None:
    from cryolens.analysis.mpl import _save, plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the hinge dataset folder (cryolens simulate --motion hinge)")
    ap.add_argument("latents", nargs="+", help="FILE.npy[:TITLE]")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    _, labels, angles, _ = ground_truth_maps(a.data)
    fig, axes = plt.subplots(1, len(a.latents), figsize=(4.2 * len(a.latents), 4), squeeze=False)
    for ax, spec in zip(axes[0], a.latents):
        path, _, title = spec.partition(":")
        z = np.load(path).reshape(len(angles), -1)
        zc = z - z.mean(0)
        vt = np.linalg.svd(zc, full_matrices=False)[2]
        pcs = zc @ vt[: min(2, z.shape[1])].T
        rho = abs(spearmanr(pcs[:, 0], angles).correlation)
        x, y = (pcs[:, 0], pcs[:, 1]) if z.shape[1] > 1 else (angles, pcs[:, 0])
        sc = ax.scatter(x, y, c=angles, s=2, cmap="viridis", alpha=0.5, rasterized=True)
        means = np.array([[x[labels == s].mean(), y[labels == s].mean()] for s in np.unique(labels)])
        ax.plot(means[:, 0], means[:, 1], "-o", color="crimson", ms=4, lw=1.5, label="state means, 0° → 40°")
        ax.set_xlabel("PC1" if z.shape[1] > 1 else "hinge angle (°)")
        ax.set_ylabel("PC2" if z.shape[1] > 1 else "z")
        ax.set_title(f"{title or Path(path).stem}\n|Spearman(PC1, angle)| = {rho:.2f}", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.colorbar(sc, ax=axes[0].tolist(), label="hinge angle (°)", shrink=0.8)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    print(_save(fig, a.out))


if __name__ == "__main__":
    main()

"""e2gmm (and, for comparison, cryodrgn) on a small hinged 4E43 set: |Spearman(PC1 of z, hinge angle)|, the time
of the set-up and per epoch, and the final loss. A reduced version of issue 22's e2gmm measurement (which asks
for 10,000 images at D = 64, 1.5 Å/px and ≥ 0.9).

  cryolens simulate --model 4E43 --out /tmp/gmmbench/hinge --motion hinge --n-states 10 --angles 0 40 \\
      --n 2000 --box 32 --apix 3.0 --snr 0.1 --seed 0
  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_gmm.py /tmp/gmmbench/hinge --epochs 5 \\
      [--recipes e2gmm cryodrgn] [--set e2gmm:n_gaussians=128 ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from cryolens.io.dataset import read_particles
from cryolens.io.runfolder import RunFolder
from cryolens.methods.registry import Known, get


def pc1(z: np.ndarray) -> np.ndarray:
    """The first principal component of ``z (N, L)`` per image."""
    zc = z - z.mean(0)
    return zc @ np.linalg.svd(zc, full_matrices=False)[2][0]


def run(recipe: str, data: Path, epochs: int, options: dict) -> dict:
    """Train ``recipe`` on ``data`` (poses and CTF known) and score it against the hinge angle."""
    particles = read_particles(data / "particles.star")
    angle = np.load(data / "ground_truth" / "ground_truth.npz")["hinge_angle_deg"]
    rec = get(recipe)
    config = rec.config({"epochs": epochs, **options})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = rec.fit(particles, Known(), RunFolder(tmp), config, device="cpu", progress=False)
    total = time.perf_counter() - t0
    per_epoch = [h["elapsed_s"] for h in out.history]
    rho = spearmanr(pc1(out.latents), angle)[0]
    return {"recipe": recipe, "options": options, "epochs": epochs, "n_images": len(particles),
            "spearman_pc1_angle": abs(float(rho)), "total_s": total, "epoch_s": per_epoch,
            "setup_s": total - sum(per_epoch), "final_loss": out.metrics.get("final_loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--recipes", nargs="+", default=["e2gmm"])
    ap.add_argument("--set", action="append", default=[], help="RECIPE:KEY=VALUE")
    args = ap.parse_args()
    for recipe in args.recipes:
        options = {}
        for item in args.set:
            name, _, kv = item.partition(":")
            if name == recipe:
                key, _, value = kv.partition("=")
                options[key] = value
        print(json.dumps(run(recipe, args.data, args.epochs, options)), flush=True)


if __name__ == "__main__":
    main()

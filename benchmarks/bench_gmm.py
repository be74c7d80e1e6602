"""The Gaussian-mixture recipes (and, for comparison, cryodrgn) on a hinged 4E43 set: |Spearman(PC1 of z, hinge
angle)| and of every PC, the time of the set-up and per epoch, and the final loss; for the recipes that output
atomic models (cryofold, atomvae; their ``model`` defaults to the state-0 ground-truth model) the median per-image
Cα RMSD to the true model of 200 images beside the base model's
(:func:`cryolens.bench.atomic_scoring.per_image_ca_rmsd`) and the fraction of consecutive Cα distances of the
decoded models outside 3.8 ± 0.3 Å; for atomvae (poses not given) the median rotation error of the encoder's poses.
Reduced versions of issue 22's measurements (10,000 images at D = 64, 1.5 Å/px).

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

import torch

from cryolens.bench.atomic_scoring import per_image_ca_rmsd
from cryolens.io.dataset import read_particles
from cryolens.metrics.atomic import ca_by_residue
from cryolens.io.runfolder import RunFolder
from cryolens.methods.registry import Known, get


def pc1(z: np.ndarray) -> np.ndarray:
    """The first principal component of ``z (N, L)`` per image."""
    zc = z - z.mean(0)
    return zc @ np.linalg.svd(zc, full_matrices=False)[2][0]


def run(recipe: str, data: Path, epochs: int, options: dict, save_z: Path | None = None) -> dict:
    """Train ``recipe`` on ``data`` (poses and CTF known) and score it against the hinge angle."""
    particles = read_particles(data / "particles.star")
    angle = np.load(data / "ground_truth" / "ground_truth.npz")["hinge_angle_deg"]
    rec = get(recipe)
    if recipe in ("cryofold", "atomvae"):
        options = {"model": str(data / "ground_truth" / "model_000.pdb"), **options}
    config = rec.config({"epochs": epochs, **options})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = rec.fit(particles, Known(), RunFolder(tmp), config, device="cpu", progress=False)
    total = time.perf_counter() - t0
    per_epoch = [h["elapsed_s"] for h in out.history]
    rho = spearmanr(pc1(out.latents), angle)[0]
    zc = out.latents - out.latents.mean(0)
    pcs = zc @ np.linalg.svd(zc, full_matrices=False)[2].T
    if save_z is not None:
        np.save(save_z.with_name(f"{save_z.stem}_{recipe}.npy"), out.latents)
    result = {"recipe": recipe, "options": options, "epochs": epochs, "n_images": len(particles),
              "spearman_pc1_angle": abs(float(rho)),
              "spearman_each_pc": [abs(float(spearmanr(pcs[:, i], angle)[0])) for i in range(pcs.shape[1])],
              "total_s": total, "epoch_s": per_epoch,
              "setup_s": total - sum(per_epoch), "final_loss": out.metrics.get("final_loss")}
    for key in ("median_rotation_error_encoder_deg", "median_rotation_error_refined_deg", "ca_outside_3.8+-0.3"):
        if key in out.metrics:
            result[key] = out.metrics[key]
    if out.decode_models is not None and "model" in options:
        result.update(atomic_scores(out, data, options["model"]))
    return result


def atomic_scores(out, data: Path, base: str, n_images: int = 200) -> dict:
    """Median per-image Cα RMSD (Å) of the decoded models of ``n_images`` images and of the base model, and the
    fraction of consecutive Cα distances of those decoded models outside 3.8 ± 0.3 Å."""
    gt = np.load(data / "ground_truth" / "ground_truth.npz")
    info = json.loads((data / "ground_truth" / "info.json").read_text())
    files = [str(data / "ground_truth" / f) for f in info["models"]]
    r = per_image_ca_rmsd(out.decode_models, out.latents, files, gt["labels"], base, n_images=n_images)
    models = out.decode_models(torch.as_tensor(out.latents[r["index"]]))
    gaps = []
    for m in models:
        ca = ca_by_residue(m)
        keys = sorted(ca)
        gaps += [np.linalg.norm(ca[b] - ca[a]) for a, b in zip(keys, keys[1:]) if a[0] == b[0] and b[1] == a[1] + 1]
    gaps = np.asarray(gaps)
    return {"ca_rmsd_median_A": float(np.nanmedian(r["rmsd"])),
            "ca_rmsd_base_median_A": float(np.nanmedian(r["base_rmsd"])),
            "ca_within_3.8+-0.3": float((np.abs(gaps - 3.8) <= 0.3).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--recipes", nargs="+", default=["e2gmm"])
    ap.add_argument("--set", action="append", default=[], help="RECIPE:KEY=VALUE")
    ap.add_argument("--save-z", type=Path, default=None, help="write z of each recipe to <stem>_<recipe>.npy")
    args = ap.parse_args()
    for recipe in args.recipes:
        options = {}
        for item in args.set:
            name, _, kv = item.partition(":")
            if name == recipe:
                key, _, value = kv.partition("=")
                options[key] = value
        print(json.dumps(run(recipe, args.data, args.epochs, options, args.save_z)), flush=True)


if __name__ == "__main__":
    main()

"""How many Gaussians a consensus map needs: e2gmm's neutral mixture (``fit_to_map``) fitted to the back-projection
of a simulated set at its known poses, for several counts, each scored by FSC-AUC (CryoBench's) against the ground
truth beside the consensus map itself. On a heterogeneous set the score is the mean over 100 images (seed 0) of the
map against each image's true state map (``bench_flex.py``'s per-image FSC-AUC); on a one-state set, against the
true map.

  OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/diag_gmm_fit.py DATA 256 1024 auto

``auto`` is the count e2gmm uses by default (:func:`cryolens.volumes.gaussian_mixture.gaussians_for_map`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cryodrgn import per_image_fsc_auc  # noqa: E402


def main() -> None:
    from cryolens.io.mrc import read_volume
    from cryolens.io.star import read_star
    from cryolens.methods.backprojection import backproject
    from cryolens.simulate.dataset import read_ground_truth
    from cryolens.volumes.gaussian_mixture import fit_to_map, gaussians_for_map

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a folder written by cryolens simulate")
    ap.add_argument("counts", nargs="+", help="numbers of Gaussians, or auto")
    ap.add_argument("--steps", type=int, default=400, help="fit steps (e2gmm's fit_steps)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    particles = read_star(a.data / "particles.star")
    gt = read_ground_truth(a.data)
    maps = np.stack([read_volume(p)[0] for p in gt["volume_files"]]).astype(np.float32)
    labels = gt.get("labels", np.zeros(len(particles), int))
    pick = np.sort(np.random.default_rng(0).choice(len(labels), min(100, len(labels)), replace=False))

    def score(volume: torch.Tensor) -> float:
        v = volume.detach().float().numpy()[None]
        return float(np.mean([per_image_fsc_auc(v, maps, labels[[k]])[0] for k in pick]))

    consensus = torch.as_tensor(backproject(particles, seed=0, progress=False).volume)
    print(json.dumps({"data": str(a.data), "states": len(maps), "auto": gaussians_for_map(consensus),
                      "consensus_fsc_auc": score(consensus)}), flush=True)
    for count in a.counts:
        n = gaussians_for_map(consensus) if count == "auto" else int(count)
        t = time.perf_counter()
        mixture = fit_to_map(consensus, particles.pixel_size, n, steps=a.steps, seed=0)
        print(json.dumps({"n_gaussians": n, "fit_s": round(time.perf_counter() - t, 1),
                          "fsc_auc": score(mixture.render()[0])}), flush=True)


if __name__ == "__main__":
    main()

"""3DFlex on a small 4E43 hinge set (issue 23, a first measurement toward "what it must show").

The bundled 4E43 dimer with its default hinge (chain B opens 0…25° about the terminal β-sheet,
``continuous_dataset.py``), at a small size so that one run fits in minutes of one core; poses and CTF
known. Trains ``3dflex`` through the registry and reports

- |Spearman(PC1 of z, hinge angle)|;
- sharpness of the moving domain: in a soft mask where the ground-truth states differ (the voxels whose
  std over the states is above 20 % of its maximum, dilated by 2 px), the FSC of the canonical map and
  of the consensus back-projection of the same particles against every ground-truth state, and the best
  0.5 crossing (Å) over the states (the canonical map's frame is not state 0 but wherever the flows put
  it, so the state it matches best is the fair reference); the same with the whole map;
- training speed (images/s of the engine) and wall time of each stage.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_flex.py --n 1500 --snr 0.1 \\
        --epochs 4 --set mesh_cells=8 --set lbfgs_iterations=4 --set lr=3e-3 --set z_lr=0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from continuous_dataset import ensure_continuous_dataset, ground_truth_maps  # noqa: E402


def moving_mask(maps: np.ndarray) -> np.ndarray:
    """Soft mask ``(D, D, D)`` of where the state maps differ (module docstring)."""
    sd = maps.std(0)
    core = ndimage.binary_dilation(sd > 0.2 * sd.max(), iterations=2)
    return ndimage.gaussian_filter(core.astype(np.float64), 1.0)


def best_resolution(volume: np.ndarray, maps: np.ndarray, mask: np.ndarray | None, px: float) -> tuple[float, int]:
    """The finest 0.5 crossing (Å) of ``volume`` against any of ``maps`` (masked if ``mask``) and its state."""
    from cryolens.metrics.fsc import fsc, fsc_masked, resolution_at

    res = []
    for m in maps:
        curve = fsc(volume, m) if mask is None else fsc_masked(volume, m, mask)
        res.append(resolution_at(curve, 0.5, px, volume.shape[-1]))
    k = int(np.argmin(res))
    return float(res[k]), k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("n", 1500), ("box", 32), ("apix", 2.5), ("snr", 0.1), ("states", 20), ("epochs", 6)):
        ap.add_argument(f"--{name}", type=type(default), default=default)
    ap.add_argument("--set", action="append", default=[], help="recipe option key=value")
    ap.add_argument("--data", help="a hinge dataset folder made by `cryolens simulate --motion hinge` instead")
    a = ap.parse_args()
    from cryolens.io.runfolder import RunFolder
    from cryolens.io.star import read_star
    from cryolens.methods.registry import get

    torch.set_num_threads(1)
    folder = Path(a.data) if a.data else ensure_continuous_dataset(a.n, a.box, a.apix, a.snr, a.states)
    particles = read_star(folder / "particles.star")
    maps, labels, angles, px = ground_truth_maps(folder)
    recipe = get("3dflex")
    config = recipe.config({"epochs": a.epochs, **dict(kv.split("=", 1) for kv in a.set)})
    t0 = time.perf_counter()
    out = recipe.fit(particles, None, RunFolder(tempfile.mkdtemp()), config, progress=False)
    wall = time.perf_counter() - t0
    z = out.latents - out.latents.mean(0)
    pc1 = z @ np.linalg.svd(z, full_matrices=False)[2][0]
    mask = moving_mask(maps)
    canonical, consensus = out.volume.numpy(), out.extra_volumes["consensus"].numpy()
    result = {"data": str(folder), "n": len(particles), "box": particles.box_size, "apix": px, "snr": a.snr,
              "epochs": a.epochs, "options": a.set,
              "spearman_pc1_angle": abs(float(spearmanr(pc1, angles).correlation)),
              "wall_s": wall, "images_per_s": out.metrics.get("images_per_s"),
              "halfmap_0143_A": out.metrics["resolution_halfmap_0143_A"],
              "consensus_halfmap_0143_A": out.metrics["consensus_resolution_halfmap_0143_A"]}
    for name, vol in (("canonical", canonical), ("consensus", consensus)):
        result[f"{name}_moving_05_A"], result[f"{name}_moving_state"] = best_resolution(vol, maps, mask, px)
        result[f"{name}_whole_05_A"], result[f"{name}_whole_state"] = best_resolution(vol, maps, None, px)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

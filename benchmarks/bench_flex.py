"""3DFlex on a small 4E43 hinge set (issue 23, measurements toward "what it must show").

The bundled 4E43 dimer with its default hinge (chain B opens 0…25° about the terminal β-sheet,
``continuous_dataset.py``), or any ``cryolens simulate --motion hinge`` folder (``--data``), at a small
size so that one run fits in minutes of one core; poses and CTF known. Trains ``3dflex`` through the
registry and reports

- |Spearman(PC1 of z, hinge angle)|;
- per-image FSC-AUC (CryoBench's, ``bench_cryodrgn.per_image_fsc_auc``) of the deformed canonical map at
  each of ``--n-eval`` images' z against that image's ground-truth state, and the same for the consensus
  map (one map for every image);
- sharpness of the moving domain: in a soft mask where the ground-truth states differ (the voxels whose
  std over the states is above 20 % of its maximum, dilated by 2 px), the FSC of the canonical map and
  of the consensus back-projection of the same particles against every ground-truth state, and the best
  0.5 crossing (Å) over the states (the canonical map's frame is not state 0 but wherever the flows put
  it, so the state it matches best is the fair reference), and against state 0; the same with the whole map;
- the same moving-domain FSC against state 0 of the canonical map *rendered at state 0's conformation*
  (convected along the flow at the mean latent of the images whose ground-truth state is 0; the labels
  are used only here, to pick the frame the reference is in): the canonical frame is wherever the flows
  put it, and an FSC is blind to a blur that only lowers amplitudes, so a blurred consensus still matches
  the *middle* state to Nyquist — state 0, an end of the motion, is the reference that shows the blur;
- training speed (images/s of the engine), wall time and peak memory (``ru_maxrss`` of the process);
- ``--peer cryodrgn``: the same Spearman and per-image FSC-AUC of another recipe trained on the same data
  for the same epochs.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_flex.py --data DIR --epochs 6 \
        --set mesh_cells=8 --set lbfgs_iterations=10 [--peer cryodrgn]
"""

from __future__ import annotations

import argparse
import json
import resource
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


def per_image_auc(decode, z: np.ndarray, maps: np.ndarray, labels: np.ndarray, pick: np.ndarray) -> float:
    """Mean per-image FSC-AUC (CryoBench; ``bench_cryodrgn.per_image_fsc_auc``) of the maps decoded at
    ``z[pick]`` against each image's ground-truth state map."""
    from bench_cryodrgn import per_image_fsc_auc

    aucs = []
    for s in range(0, len(pick), 16):
        chunk = pick[s:s + 16]
        vols = decode(torch.as_tensor(z[chunk], dtype=torch.float32)).detach().cpu().numpy()
        aucs.append(per_image_fsc_auc(vols.astype(np.float32), maps, labels[chunk]))
    return float(np.concatenate(aucs).mean())


def spearman_pc1(latents: np.ndarray, angles: np.ndarray) -> float:
    z = latents - latents.mean(0)
    return abs(float(spearmanr(z @ np.linalg.svd(z, full_matrices=False)[2][0], angles).correlation))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports ``ru_maxrss`` in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_recipe(name: str, particles, epochs: int, options: list[str], folder: str | None = None):
    """``(outputs, wall s, run folder)`` of recipe ``name`` trained through the registry (in ``folder``, e.g. a
    copy of a finished run's folder with ``--set resume=true`` to redo only what follows the training)."""
    from cryolens.io.runfolder import RunFolder
    from cryolens.methods.registry import get

    recipe = get(name)
    config = recipe.config({"epochs": epochs, **dict(kv.split("=", 1) for kv in options)})
    run = folder or tempfile.mkdtemp(prefix=f"bench_{name}_")
    t0 = time.perf_counter()
    out = recipe.fit(particles, None, RunFolder(run), config, progress=False)
    return out, time.perf_counter() - t0, run


def score_flex(a, folder: Path, particles, maps, labels, angles, px: float, pick: np.ndarray) -> None:
    """Train 3dflex and print its scores (module docstring)."""
    from cryolens.metrics.fsc import fsc_masked, resolution_at

    out, wall, run = run_recipe("3dflex", particles, a.epochs, a.set, a.run_dir)
    mask = moving_mask(maps)
    canonical, consensus = out.volume.numpy(), out.extra_volumes["consensus"].numpy()
    z0 = torch.as_tensor(out.latents[labels == 0].mean(0, keepdims=True))
    at_state0 = out.decode(z0)[0].cpu().numpy()
    np.savez(Path(run) / "bench_maps.npz", canonical=canonical, consensus=consensus, at_state0=at_state0,
             latents=out.latents, half1=out.half_maps[0].numpy(), half2=out.half_maps[1].numpy())
    result = {"data": str(folder), "n": len(particles), "box": particles.box_size, "apix": px, "snr": a.snr,
              "epochs": a.epochs, "options": a.set, "run": run, "spearman_pc1_angle": spearman_pc1(out.latents, angles),
              "fsc_auc_per_image": per_image_auc(out.decode, out.latents, maps, labels, pick),
              "consensus_fsc_auc_per_image": per_image_auc(
                  lambda zb: torch.as_tensor(consensus)[None].expand(len(zb), -1, -1, -1), out.latents, maps, labels,
                  pick),
              "wall_s": wall, "images_per_s": out.metrics.get("images_per_s"), "peak_rss_MB": peak_rss_mb(),
              "flexible_reconstruction_s": out.metrics.get("flexible_reconstruction_s"),
              "canonical_at_state0_moving_state0_05_A": float(resolution_at(
                  fsc_masked(at_state0, maps[0], mask), 0.5, px, maps.shape[-1])),
              "halfmap_0143_A": out.metrics["resolution_halfmap_0143_A"],
              "consensus_halfmap_0143_A": out.metrics["consensus_resolution_halfmap_0143_A"]}
    for name, vol in (("canonical", canonical), ("consensus", consensus)):
        result[f"{name}_moving_05_A"], result[f"{name}_moving_state"] = best_resolution(vol, maps, mask, px)
        result[f"{name}_whole_05_A"], result[f"{name}_whole_state"] = best_resolution(vol, maps, None, px)
        result[f"{name}_moving_state0_05_A"] = float(resolution_at(fsc_masked(vol, maps[0], mask), 0.5, px,
                                                                   vol.shape[-1]))
    print(json.dumps(result, indent=1), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("n", 1500), ("box", 32), ("apix", 2.5), ("snr", 0.1), ("states", 20), ("epochs", 6),
                          ("n_eval", 100)):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=default)
    ap.add_argument("--set", action="append", default=[], help="recipe option key=value")
    ap.add_argument("--data", help="a hinge dataset folder made by `cryolens simulate --motion hinge` instead")
    ap.add_argument("--peer", action="append", default=[], help="also train this recipe (e.g. cryodrgn)")
    ap.add_argument("--peer-set", action="append", default=[], help="the peers' option key=value")
    ap.add_argument("--run-dir", help="3dflex's run folder (default: a new temporary one)")
    ap.add_argument("--peer-only", action="store_true", help="train only the peers (not 3dflex)")
    ap.add_argument("--save-z", type=Path, help="also write each peer's z to <stem>_<peer>.npy")
    a = ap.parse_args()
    from cryolens.io.star import read_star

    torch.set_num_threads(1)
    folder = Path(a.data) if a.data else ensure_continuous_dataset(a.n, a.box, a.apix, a.snr, a.states)
    particles = read_star(folder / "particles.star")
    maps, labels, angles, px = ground_truth_maps(folder)
    pick = np.sort(np.random.default_rng(0).choice(len(labels), min(a.n_eval, len(labels)), replace=False))
    if not a.peer_only:
        score_flex(a, folder, particles, maps, labels, angles, px, pick)
    for peer in a.peer:
        pout, pwall, prun = run_recipe(peer, particles, a.epochs, a.peer_set)
        if a.save_z:
            np.save(a.save_z.with_name(f"{a.save_z.stem}_{peer}.npy"), pout.latents)
        print(json.dumps({"peer": peer, "epochs": a.epochs, "options": a.peer_set, "run": prun, "wall_s": pwall,
                          "images_per_s": pout.metrics.get("images_per_s"), "peak_rss_MB": peak_rss_mb(),
                          "spearman_pc1_angle": spearman_pc1(pout.latents, angles),
                          "fsc_auc_per_image": per_image_auc(pout.decode, pout.latents, maps, labels, pick)},
                         indent=1), flush=True)


if __name__ == "__main__":
    main()

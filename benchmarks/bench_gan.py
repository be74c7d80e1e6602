"""CryoGAN against the known-pose back-projection of the same images: 4E43 (or `--model`), D 32 (or as given), 3 Å/px,
uniform poses, CTF from the dataset (defocus 1–2.5 µm), no shifts, at a given SNR.

- ``backprojection``: the images' true poses and CTFs (``methods.backprojection.backproject``), FSC against
  the true map, 0.5 crossing.
- ``cryogan``: ``cryolens`` recipe ``cryogan`` with its defaults except ``epochs`` (no poses given); wall time
  and the peak RSS of this process. The map's frame and hand are arbitrary, so a subset of the images is
  pose-searched against it (``inference.pose_refine.refine_poses``, hierarchical search from HEALPix level 1,
  3 levels), the global rotation and hand that map those poses onto the true ones
  (``metrics.align_rotations``) rotate the map into the truth's frame (``metrics.rotate_map``), and its FSC
  against the true map gives the 0.5 crossing. The median pose error after alignment is reported too.
  That rotation is then refined on the maps themselves (``refined``: Nelder–Mead over a rotation vector
  composed with it, maximising the real-space correlation of the rotated map with the true map, as a map is
  fitted into a reference); both crossings are reported (the pose-search frame is coarse where the searched
  poses scatter).

- ``--method cryosparc-abinit`` (or another recipe): the same, for a peer that searches poses (its own defaults),
  in a process of its own so that the peak RSS is its own.

  nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_gan.py \
      --out /tmp/bench_gan --n 2000 --box 32 --snr 1 --epochs 30 [--set blur_decay=0.9 ...] [--method M]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_particles
from cryolens.io.runfolder import RunFolder
from cryolens.methods import get
from cryolens.methods.backprojection import backproject
from cryolens.metrics.fsc import fsc, resolution_at
from cryolens.metrics.pose_error import align_rotations, apply_alignment, rotate_map
from cryolens.imaging.rotations import geodesic_distance, rotvec_to_matrix
from cryolens.inference.pose_refine import refine_poses
from cryolens.simulate import bundled_model, simulate_dataset, volumes_from_models
from cryolens.simulate.dataset import read_ground_truth

PX = 3.0


def dataset(out: Path, n: int, box: int, snr: float, model: str = "4E43") -> tuple[Path, torch.Tensor]:
    truth = volumes_from_models([read_atoms(bundled_model(model))], box, PX)[0]
    ds = out / (f"ds_{box}_{n}_{snr:g}" + ("" if model == "4E43" else f"_{model}"))
    if not (ds / "particles.star").is_file():
        simulate_dataset(ds, truth, n, PX, snr, seed=0, progress=False, overwrite=True)
    return ds, truth


def res05(volume: torch.Tensor, truth: torch.Tensor, box: int) -> float:
    return float(resolution_at(fsc(volume, truth), 0.5, PX, box))


def aligned(volume: torch.Tensor, particles, truth_rot: torch.Tensor, n_align: int) -> tuple[torch.Tensor, float]:
    """The map in the truth's frame (module docstring) and the median pose error (°) of the aligned subset."""
    settings = SimpleNamespace(refine_levels=3, pose_batch=100, refine_base_level=1, max_shift=0.0,
                               refine_shift_step=1.0, refine_keep=8)
    idx = np.arange(min(n_align, len(particles)))
    rot, _ = refine_poses(volume, particles, settings, "cpu", indices=idx)
    g, mirrored = align_rotations(rot, truth_rot[idx])
    err = geodesic_distance(apply_alignment(rot, g, mirrored).double(), truth_rot[idx].double()) * 180 / np.pi
    return rotate_map(volume, g, mirrored), float(err.median()), (g, mirrored)


def refine_frame(volume: torch.Tensor, truth: torch.Tensor, g: torch.Tensor,
                 mirrored: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The map rotated by ``exp(w) · g`` (``w`` a rotation vector, Nelder–Mead from 0) maximising its real-space
    correlation with ``truth`` (module docstring), and that rotation."""
    from scipy.optimize import minimize

    t = truth.double().flatten()
    t = (t - t.mean()) / t.norm()

    def turn(w: np.ndarray) -> torch.Tensor:
        return rotvec_to_matrix(torch.as_tensor(w, dtype=torch.float64)) @ g.double()

    def rotated(w: np.ndarray) -> torch.Tensor:
        return rotate_map(volume, turn(w), mirrored)

    def loss(w: np.ndarray) -> float:
        v = rotated(w).double().flatten()
        return -float(((v - v.mean()) / (v - v.mean()).norm() * t).sum())

    start = np.vstack([np.zeros(3), 0.05 * np.eye(3)])  # simplex of 0.05 rad (2.9°) edges
    best = minimize(loss, np.zeros(3), method="Nelder-Mead",
                    options={"initial_simplex": start, "xatol": 1e-3, "fatol": 1e-7, "maxiter": 300})
    return rotated(best.x), turn(best.x)


def score_maps(paths: list[Path], particles, truth: torch.Tensor, truth_rot: torch.Tensor, args) -> None:
    """``--score-maps``: each map's 0.5 crossing against the truth in the pose-search and refined frames, and the
    file's modification time (when a run wrote it)."""
    from cryolens.io.mrc import read_volume

    for path in paths:
        volume = torch.from_numpy(read_volume(path)[0]).float()
        if "_half1" in path.name:
            half2 = read_volume(path.with_name(path.name.replace("_half1", "_half2")))[0]
            volume = 0.5 * (volume + torch.from_numpy(half2).float())
        aligned_map, median_err, (g, mirrored) = aligned(volume, particles, truth_rot, args.n_align)
        fitted, _ = refine_frame(volume, truth, g, mirrored)
        print(json.dumps({"map": str(path), "written": time.strftime("%H:%M:%S", time.gmtime(path.stat().st_mtime)),
                          "res05_A": res05(aligned_map, truth, args.box),
                          "res05_refined_frame_A": res05(fitted, truth, args.box),
                          "median_pose_error_aligned_deg": median_err}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--snr", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--model", default="4E43", help="bundled atomic model to simulate (cryolens.simulate)")
    ap.add_argument("--n-align", type=int, default=300)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE option of the method (repeatable)")
    ap.add_argument("--method", default="cryogan", help="the recipe to run blind: cryogan, or a peer such as "
                    "cryosparc-abinit (its own defaults; each in its own process, so peak RSS is its own)")
    ap.add_argument("--score-maps", nargs="+", type=Path, default=[],
                    help="score these maps (.mrc; a *_half1.mrc is averaged with its *_half2.mrc) the same way "
                         "and stop: e.g. a peer's iterations, to find when it reached a resolution")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ds, truth = dataset(args.out, args.n, args.box, args.snr, args.model)
    particles = read_particles(ds / "particles.star")
    gt = read_ground_truth(ds)
    truth_rot = torch.as_tensor(gt["rotations"], dtype=torch.float32)
    if args.score_maps:
        score_maps(args.score_maps, particles, truth, truth_rot, args)
        return
    t0 = time.time()
    bp = backproject(particles, progress=False)
    result = {"n": args.n, "box": args.box, "snr": args.snr, "pixel_size": PX,
              "backprojection": {"res05_A": res05(bp.volume, truth, args.box), "seconds": time.time() - t0}}
    tag = "_".join([str(args.box), str(args.n), f"{args.snr:g}", *([args.model] if args.model != "4E43" else []),
                    *args.set]).replace("=", "")
    if args.method != "cryogan":
        tag = f"{args.method}_{tag}"
    recipe = get(args.method)
    length = {"epochs": args.epochs} if args.method == "cryogan" else {}
    config = recipe.config({**length, **dict(kv.split("=", 1) for kv in args.set)})
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    t0 = time.time()
    out = recipe.fit(blind, None, RunFolder(args.out / f"run_{tag}"), config, progress=False)
    seconds = time.time() - t0
    torch.save(out.volume, args.out / f"map_{tag}.pt")
    volume, median_err, (g, mirrored) = aligned(out.volume, particles, truth_rot, args.n_align)
    fitted, _ = refine_frame(out.volume, truth, g, mirrored)
    hist = out.history
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result[args.method] = {"options": args.set, "res05_A": res05(volume, truth, args.box),
                           "res05_refined_frame_A": res05(fitted, truth, args.box), "seconds": seconds,
                           "peak_rss_MiB": peak, "median_pose_error_aligned_deg": median_err}
    if args.method == "cryogan":
        result["cryogan"].update(epochs=args.epochs,
                                 wasserstein_first_last_epoch=[hist[0]["wasserstein"], hist[-1]["wasserstein"]])
    (args.out / f"result_{tag}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

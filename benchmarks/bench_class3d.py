"""Two-class acceptance of `relion-class3d`, side by side with RELION 3.1 `relion_refine --K 2`.

Dataset (cached under benchmarks/_data/, `bench_abinit.ensure_dataset("hinge")`): the bundled 4E43
model and the same model with chain B turned 30° about the bundled hinge (`simulate.bundled_hinge`),
50/50, D = 64, 1.5 Å/px, SNR 0.1, CTF (defocus 1.0–2.5 µm), shifts std 1.5 px (≤ 3 px), uniform
poses. The first --n images are used (a STAR file of that subset; the same for both programs).

Same start for both: the mean of the two ground-truth maps, low-passed to 60 Å by each program
(`--ini_high 60`; ours `initial_lowpass` 60), one copy per class; CTF known, poses searched.
  cryolens — `methods.class3d.classify`: SO(3) level --healpix-order (2: 15°, exhaustive), offsets ≤ 3 px step 1
             (circular), T = 4, --iterations iterations, random first class split (seeded).
  RELION   — `relion_refine --K 2 --tau2_fudge 4 --healpix_order H --offset_range 3 --offset_step 1
             --ini_high 60 --ctf --particle_diameter 80 --iter N --j T` (its default adaptive
             oversampling 1: H = 2 is 15° coarse, 7.5° fine; no --norm/--scale: the data have none).
Reported: class accuracy (best of the two label matchings, against the simulated state), the
populations and the wall time of each.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_class3d.py --n 1000 --iterations 10 [--no-relion] \
      [--json out.json]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_abinit import ensure_dataset  # noqa: E402


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction correct under the better of the two label matchings (K = 2)."""
    a = float(np.mean(labels == truth))
    return max(a, 1.0 - a)


def run_relion(star: Path, start: Path, work: Path, iterations: int, threads: int, seed: int,
               healpix_order: int = 2) -> tuple[np.ndarray, float]:
    """relion_refine Class3D; returns (0-based class of each particle in input order, wall seconds)."""
    from cryolens.bench.relion import run_relion as run

    out = work / "relion"
    out.mkdir(parents=True, exist_ok=True)
    args = ["--i", star, "--o", out / "run", "--ref", start, "--ini_high", 60, "--K", 2, "--iter", iterations,
            "--tau2_fudge", 4, "--healpix_order", healpix_order, "--offset_range", 3, "--offset_step", 1, "--ctf",
            "--particle_diameter", 80, "--sym", "C1", "--pad", 2, "--j", threads, "--pool", 3,
            "--dont_combine_weights_via_disc", "--random_seed", seed]
    t0 = time.perf_counter()
    run("relion_refine", args, cwd=work, timeout=24 * 3600)
    wall = time.perf_counter() - t0
    return relion_labels(out / f"run_it{iterations:03d}_data.star", star), wall


def relion_labels(data_star: Path, input_star: Path) -> np.ndarray:
    """0-based ``rlnClassNumber`` of RELION's ``run_itNNN_data.star``, in the order of ``input_star``."""
    import starfile

    data = starfile.read(data_star)["particles"]
    names = list(starfile.read(input_star)["particles"]["rlnImageName"])
    cls = dict(zip(data["rlnImageName"], data["rlnClassNumber"].astype(int) - 1, strict=True))
    return np.array([cls[n] for n in names])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--no-cryolens", action="store_true")
    ap.add_argument("--healpix-order", type=int, default=2, help="both programs (RELION: + 1 oversampled level)")
    ap.add_argument("--modal", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import read_volume, write_volume
    from cryolens.io.star import write_star
    from cryolens.simulate import read_ground_truth

    data = ensure_dataset("hinge")
    particles = read_particles(data / "particles.star").subset(np.arange(args.n))
    truth = read_ground_truth(data)["labels"][:args.n].astype(int)
    gt_vols = [torch.from_numpy(read_volume(f)[0].copy()) for f in read_ground_truth(data)["volume_files"]]
    work = Path(tempfile.mkdtemp(prefix="bench_class3d_"))
    blind = particles.subset(np.arange(len(particles)))
    blind.rotations, blind.shifts = None, None
    star = work / "particles.star"
    write_star(star, blind)
    start = work / "start.mrc"
    write_volume(start, torch.stack(gt_vols).mean(0).numpy(), particles.pixel_size)
    result = {"n": args.n, "iterations": args.iterations, "threads": args.threads, "work": str(work),
              "healpix_order": args.healpix_order,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "populations_true": np.bincount(truth).tolist()}

    wall = None
    if not args.no_cryolens:
        wall = run_cryolens(blind, gt_vols, truth, args, result)
    if not args.no_relion:
        labels, wall_r = run_relion(star, start, work, args.iterations, args.threads, args.seed,
                                    args.healpix_order)
        result["relion"] = {"accuracy": accuracy(labels, truth), "wall_s": wall_r,
                            "populations": (np.bincount(labels, minlength=2) / len(labels)).tolist()}
        print(f"RELION:   accuracy {result['relion']['accuracy']:.4f}, {wall_r:.0f} s", flush=True)
        if wall is not None:
            result["time_ratio_cryolens_over_relion"] = wall / wall_r
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def run_cryolens(blind, gt_vols, truth, args, result) -> float:
    from cryolens.imaging.so3_grid import angular_step
    from cryolens.methods.class3d import classify

    t0 = time.perf_counter()
    res = classify(blind, torch.stack(gt_vols).mean(0), {"n_classes": 2, "n_iterations": args.iterations,
                                                         "healpix_order": args.healpix_order, "offset_range": 3.0,
                                                         "offset_step": 1.0,
                                                         "batch_size": args.batch_size, "seed": args.seed,
                                                         "modal": args.modal}, progress=False)
    wall = time.perf_counter() - t0
    result["cryolens"] = {"accuracy": accuracy(res.labels, truth), "wall_s": wall,
                          "class_prior": res.class_prior.tolist(), "angular_step_deg": angular_step(args.healpix_order),
                          "history": res.history}
    print(f"cryolens: accuracy {result['cryolens']['accuracy']:.4f}, {wall:.0f} s, "
          f"populations {np.round(res.class_prior.numpy(), 3).tolist()}", flush=True)
    return wall


if __name__ == "__main__":
    main()

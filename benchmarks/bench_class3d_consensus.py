"""Two classes the way practitioners run them: a consensus refinement, then Class3D with the poses kept
(RELION's ``--skip_align``) — cryolens and RELION 3.1 from the same consensus poses and map.

Dataset (`bench_abinit.ensure_dataset("hinge")`, cached under benchmarks/_data/): the bundled 4E43 and
the same model with chain B turned 30° about its hinge, 50/50, D = 64, 1.5 Å/px, SNR 0.1, CTF
(1.0–2.5 µm), shifts std 1.5 px (≤ 3 px), uniform poses; the first --n images.

1. consensus: `inference.autorefine.auto_refine` (relion-refine3d, full posterior) from the mean of the
   two true maps low-passed to --lowpass Å, poses unknown; --max-iterations iterations. Its median
   rotation error (after global alignment) is reported.
2. cryolens: `methods.class3d.classify` with ``skip_align`` (K = 2, T = 4) from the consensus map
   low-passed to --lowpass Å, random first split, --iterations iterations.
3. RELION:   `relion_refine --K 2 --skip_align --tau2_fudge 4 --ini_high LOWPASS --iter N --ctf` on the
   consensus STAR (its poses) with the consensus map as --ref.
Reported: class accuracy (best of the two label matchings against the simulated state), populations,
wall time of each step.

  .venv/bin/python benchmarks/bench_class3d_consensus.py --n 2000 --threads 2 [--no-relion] [--json out.json]
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
from bench_class3d import accuracy, relion_labels  # noqa: E402


def run_relion_skip_align(star: Path, ref: Path, work: Path, iterations: int, threads: int, lowpass: float,
                          seed: int, truth: np.ndarray | None = None) -> tuple[np.ndarray, float, list]:
    """relion_refine Class3D --skip_align; (0-based class per particle in input order, wall seconds,
    per iteration ``{"iteration", "elapsed_s", "accuracy"}`` — elapsed from the start to the write of
    that iteration's ``run_itNNN_data.star``; accuracy against ``truth`` when given)."""
    from cryolens.bench.relion import run_relion

    out = work / "relion"
    out.mkdir(parents=True, exist_ok=True)
    args = ["--i", star, "--o", out / "run", "--ref", ref, "--ini_high", lowpass, "--K", 2, "--iter", iterations,
            "--tau2_fudge", 4, "--skip_align", "--ctf", "--particle_diameter", 80, "--sym", "C1", "--pad", 2,
            "--j", threads, "--pool", 3, "--dont_combine_weights_via_disc", "--random_seed", seed]
    t0, t0_epoch = time.perf_counter(), time.time()
    run_relion("relion_refine", args, cwd=work, timeout=6 * 3600)
    wall = time.perf_counter() - t0
    per_it = []
    for it in range(1, iterations + 1):
        f = out / f"run_it{it:03d}_data.star"
        row = {"iteration": it, "elapsed_s": f.stat().st_mtime - t0_epoch}
        if truth is not None:
            row["accuracy"] = accuracy(relion_labels(f, star), truth)
        per_it.append(row)
    return relion_labels(out / f"run_it{iterations:03d}_data.star", star), wall, per_it


def first_reaching(per_it: list, level: float) -> dict | None:
    """The first iteration whose accuracy is ≥ ``level`` and stays so in every later one."""
    for i, row in enumerate(per_it):
        if all(r["accuracy"] >= level for r in per_it[i:]):
            return row
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--lowpass", type=float, default=30.0, help="start-map low-pass of both steps, Å")
    ap.add_argument("--max-iterations", type=int, default=8, help="consensus refinement iterations (cap)")
    ap.add_argument("--iterations", type=int, default=15, help="Class3D iterations (both programs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--consensus", help="reuse step 1: a work folder of an earlier run at the same --n "
                                        "(its consensus.star and consensus.mrc)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from cryolens.inference.autorefine import RefineConfig, auto_refine, poses_to_particles
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import read_volume, write_volume
    from cryolens.io.star import write_star
    from cryolens.methods.class3d import classify
    from cryolens.metrics.pose_error import pose_error_summary
    from cryolens.simulate import read_ground_truth

    data = ensure_dataset("hinge")
    particles = read_particles(data / "particles.star").subset(np.arange(args.n))
    gt = read_ground_truth(data)
    truth = gt["labels"][:args.n].astype(int)
    gt_vols = torch.stack([torch.from_numpy(read_volume(f)[0].copy()) for f in gt["volume_files"]])
    blind = particles.subset(np.arange(args.n))
    blind.rotations, blind.shifts = None, None
    work = Path(tempfile.mkdtemp(prefix="bench_class3d_consensus_"))
    result = {"n": args.n, "threads": args.threads, "lowpass_A": args.lowpass, "work": str(work),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "populations_true": np.bincount(truth, minlength=2).tolist()}

    if args.consensus:
        star, mapf = Path(args.consensus) / "consensus.star", Path(args.consensus) / "consensus.mrc"
        posed = read_particles(star)
        if len(posed) != args.n:
            raise SystemExit(f"{star}: {len(posed)} particles, not --n {args.n}")
        ref_volume = torch.from_numpy(read_volume(mapf)[0].copy())
        err = pose_error_summary(posed.rotations, particles.rotations)
        result["consensus"] = {"reused": str(args.consensus), "median_rotation_error_deg": err["median_deg"]}
        print(f"consensus reused from {args.consensus}: median rotation error {err['median_deg']:.2f}°", flush=True)
    else:
        t0 = time.perf_counter()
        cfg = RefineConfig(initial_lowpass=args.lowpass, offset_range=3.0, offset_step=1.0, tau2_fudge=4.0,
                           max_iterations=args.max_iterations, seed=args.seed)
        ref = auto_refine(blind, gt_vols.mean(0), config=cfg, progress=True)
        wall_c = time.perf_counter() - t0
        err = pose_error_summary(ref.rotations, particles.rotations)
        per_state = [pose_error_summary(ref.rotations[truth == k], particles.rotations[truth == k])["median_deg"]
                     for k in (0, 1)]
        result["consensus"] = {"wall_s": wall_c, "iterations": len(ref.history), "resolution_A": ref.resolution,
                               "median_rotation_error_deg": err["median_deg"],
                               "median_rotation_error_per_state_deg": per_state}
        print(f"consensus: {len(ref.history)} iterations, {ref.resolution:.2f} Å (half maps), median rotation error "
              f"{err['median_deg']:.2f}° (per state {per_state[0]:.2f}°, {per_state[1]:.2f}°), {wall_c:.0f} s",
              flush=True)
        posed = poses_to_particles(blind, {"rotations": ref.rotations, "shifts": ref.shifts,
                                           "half": torch.as_tensor(ref.half)})
        star, mapf = work / "consensus.star", work / "consensus.mrc"
        write_star(star, posed)
        write_volume(mapf, ref.volume.numpy(), particles.pixel_size)
        ref_volume = ref.volume

    per_it: list = []
    paused = [0.0]  # seconds spent scoring labels between iterations, not counted
    t0 = time.perf_counter()

    def follow(it, r):
        t1 = time.perf_counter()
        per_it.append({"iteration": it, "elapsed_s": t1 - t0 - paused[0],
                       "accuracy": accuracy(r.labels.cpu().numpy(), truth)})
        paused[0] += time.perf_counter() - t1

    res = classify(posed, ref_volume, {"n_classes": 2, "n_iterations": args.iterations, "skip_align": True,
                                       "initial_lowpass": args.lowpass, "seed": args.seed, "batch_size": 256},
                   progress=False, on_iteration=follow)
    wall = time.perf_counter() - t0 - paused[0]
    result["cryolens"] = {"accuracy": accuracy(res.labels, truth), "wall_s": wall, "per_iteration": per_it,
                          "reached_0.95": first_reaching(per_it, 0.95),
                          "class_prior": res.class_prior.tolist(), "history": res.history}
    print(f"cryolens skip_align: accuracy {result['cryolens']['accuracy']:.4f}, {wall:.0f} s, populations "
          f"{np.round(res.class_prior.numpy(), 3).tolist()}", flush=True)
    if not args.no_relion:
        labels, wall_r, per_it_r = run_relion_skip_align(star, mapf, work, args.iterations, args.threads,
                                                         args.lowpass, args.seed, truth)
        result["relion"] = {"accuracy": accuracy(labels, truth), "wall_s": wall_r, "per_iteration": per_it_r,
                            "reached_0.95": first_reaching(per_it_r, 0.95),
                            "populations": (np.bincount(labels, minlength=2) / len(labels)).tolist()}
        result["time_ratio_cryolens_over_relion"] = wall / wall_r
        print(f"RELION --skip_align: accuracy {result['relion']['accuracy']:.4f}, {wall_r:.0f} s", flush=True)
        a, b = result["cryolens"]["reached_0.95"], result["relion"]["reached_0.95"]
        if a and b:
            result["time_to_0.95_ratio"] = a["elapsed_s"] / b["elapsed_s"]
            print(f"≥ 95 % from then on: cryolens at iteration {a['iteration']} ({a['elapsed_s']:.0f} s), RELION at "
                  f"iteration {b['iteration']} ({b['elapsed_s']:.0f} s): ratio {result['time_to_0.95_ratio']:.2f}")
    for key in ("cryolens", "relion"):
        if key in result:
            print(key, " ".join(f"{r['iteration']}:{r['accuracy']:.3f}@{r['elapsed_s']:.0f}s"
                                for r in result[key]["per_iteration"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

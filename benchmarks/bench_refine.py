"""Acceptance of gold-standard auto-refinement (cryolens `relion-refine3d`) and the side-by-side with
`relion_refine --auto_refine` on the same data from the same start map.

Dataset (cached under benchmarks/_data/, made once by `cryolens.simulate.simulate_dataset`): 4E43.pdb →
D = 64, 1.5 Å/px; 5,000 images, uniform poses, Gaussian shifts (std 1.5 px, at most 3 px), CTF (mean
defocus 1.0–2.5 µm), white noise at SNR 0.1. A run uses the first ``--n`` images (one STAR file of
them, read by both programs). Start map: the ground-truth map low-passed to 20 Å (cryolens:
`initial_lowpass=20` on the ground truth; RELION: `--ref` ground truth with `--ini_high 20`).

Phases (each writes its JSON under the run folder; `--phase all` runs them in order):
  prepare   dataset, the STAR of the first N images, the known-pose back-projection of those images
            (its FSC-vs-truth 0.5 resolution is the target: refinement within 5 % of it).
  cryolens  `auto_refine` with the `relion-refine3d` recipe's options (initial low-pass 20 Å),
            `--threads` torch threads; wall and CPU time, iterations, half-map resolution, FSC vs truth,
            median rotation error after global alignment, shift error.
  evaluate  the cryolens run as of its last checkpoint (for a run stopped before convergence).
  relion-evaluate  every finished RELION iteration (mean of its half maps, its poses) against the truth.
  relion    `mpirun -np THREADS+1 relion_refine_mpi --auto_refine --split_random_halves --ctf
            --healpix_order 2 --auto_local_healpix_order 4 --offset_range 5 --offset_step 2 --ini_high 20
            --particle_diameter 80 --flatten_solvent --zero_mask --low_resol_join_halves 40 --pad 2 --firstiter_cc
            --j 1` (RELION 3.1 GUI defaults otherwise; the half-set split needs the MPI build: a master and
            one worker per half, i.e. THREADS busy cores), same measurements on its run_data.star and
            run_class001.mrc. With `--resume` it continues a stopped run (`relion_refine_mpi --continue`
            on the last run_itNNN_optimiser.star); the finished iterations' time comes from their files.

  .venv/bin/python benchmarks/bench_refine.py --phase all --n 2000 --threads 2 --out benchmarks/_data/refine_n2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
BOX, APIX, SNR, LOWPASS = 64, 1.5, 0.1, 20.0


def ensure_dataset() -> Path:
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model, simulate_dataset, volumes_from_models

    out = DATA / f"4E43_D{BOX}_apix{APIX:g}_n5000_snr{SNR:g}_shift3_seed0"
    if not (out / "particles.star").is_file():
        vol = volumes_from_models([read_atoms(bundled_model("4E43"))], BOX, APIX)
        simulate_dataset(out, vol, 5000, APIX, SNR, shift_std=1.5, shift_max=3.0, seed=0, progress=False)
    return out


def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _truth(ds: Path, n: int) -> tuple[torch.Tensor, dict]:
    from cryolens.io.mrc import read_volume
    from cryolens.simulate.dataset import read_ground_truth

    gt = read_ground_truth(ds)
    vol, _ = read_volume(gt["volume_files"][0])
    return torch.from_numpy(np.asarray(vol, dtype=np.float32)), {k: gt[k][:n] for k in ("rotations", "shifts")}


def evaluate(volume: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor, truth: torch.Tensor,
             gt: dict) -> dict:
    """FSC-vs-truth 0.5 resolution of ``volume``, rotation error after global alignment, shift error."""
    from cryolens.metrics.fsc import fsc, resolution_at
    from cryolens.metrics.pose_error import pose_error_summary

    curve = np.asarray(fsc(volume, truth))
    err = pose_error_summary(rotations.float(), torch.as_tensor(gt["rotations"]).float())
    shift_err = (shifts.float() - torch.as_tensor(gt["shifts"]).float()).norm(dim=1)
    return {"resolution_vs_truth_05_A": float(resolution_at(curve, 0.5, APIX, BOX)),
            "fsc_vs_truth": curve.round(4).tolist(), "rotation_error_median_deg": float(err["median_deg"]),
            "rotation_error_mean_deg": float(err["mean_deg"]), "mirrored": bool(err["mirrored"]),
            "shift_error_median_px": float(shift_err.median())}


def prepare(out: Path, n: int) -> dict:
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import write_volume
    from cryolens.io.star import write_star
    from cryolens.methods.backprojection import backproject

    ds = ensure_dataset()
    out.mkdir(parents=True, exist_ok=True)
    star = ds / f"particles_first{n}.star"
    p = read_particles(ds / "particles.star").subset(np.arange(n))
    if not star.is_file():
        write_star(star, p)
    truth, gt = _truth(ds, n)
    write_volume(out / "truth.mrc", truth.numpy(), APIX)
    t0 = time.perf_counter()
    bp = backproject(p, progress=False)
    known = evaluate(bp.volume, p.rotations, p.shifts, truth, gt)
    res = {"dataset": str(ds), "star": str(star), "n": n, "known_pose_backprojection": {
        "resolution_vs_truth_05_A": known["resolution_vs_truth_05_A"], "halfmap_0143_A": bp.resolution,
        "wall_s": time.perf_counter() - t0}}
    (out / "prepare.json").write_text(json.dumps(res, indent=1))
    return res


def run_cryolens(out: Path, n: int, threads: int, max_iterations: int, resume: bool = False) -> dict:
    from cryolens.inference.autorefine import auto_refine
    from cryolens.io.dataset import read_particles
    from cryolens.io.runfolder import RunFolder
    from cryolens.io.star import read_star
    from cryolens.methods.refine3d import RELION_DEFAULTS, iteration_writer, refine_config

    torch.set_num_threads(threads)
    prep = json.loads((out / "prepare.json").read_text())
    p = read_particles(prep["star"])
    p.rotations, p.shifts = None, None  # poses unknown
    truth, gt = _truth(Path(prep["dataset"]), n)
    cfg = refine_config({**RELION_DEFAULTS, "lowpass": LOWPASS, "max_iterations": max_iterations})
    run = RunFolder(out / "cryolens")
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), _cpu()
    res = auto_refine(p, truth, config=cfg, run=run, progress=True, resume=resume,
                      on_iteration=iteration_writer(run, p))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if resume:  # the iterations' own clock, summed over the interrupted and the resumed process
        wall = res.history[-1]["elapsed_s"]
    ev = evaluate(res.volume, res.rotations, res.shifts, truth, gt)
    per_iteration = []  # scored as RELION's iterations are (relion-evaluate): mean of the half maps, the poses
    for k, h in enumerate(res.history, start=1):
        if not run.path(f"iter{k:03d}_particles.star").is_file():
            continue
        it_p = read_star(run.path(f"iter{k:03d}_particles.star"))
        halves = (run.path(f"iter{k:03d}_half1.mrc"), run.path(f"iter{k:03d}_half2.mrc"))
        per_iteration.append({"iteration": k, "elapsed_s": h.get("elapsed_s"), "halfmap_0143_A": h["resolution_A"],
                              **_score_halves(halves, it_p.rotations, it_p.shifts, truth, gt)})
    out_d = {"program": "cryolens auto_refine (relion-refine3d)", "threads": threads, "wall_s": wall,
             "cpu_s": cpu if not resume else None, "resumed": resume,
             "load_before": load0, "load_after": os.getloadavg()[0], "iterations": len(res.history),
             "converged": res.converged, "halfmap_0143_A": res.resolution, **ev,
             "history": [{k: v for k, v in h.items() if k != "fsc"} for h in res.history],
             "per_iteration": per_iteration}
    (out / "cryolens.json").write_text(json.dumps(out_d, indent=1))
    return out_d


def evaluate_checkpoint(out: Path, n: int) -> dict:
    """The cryolens run as of its last checkpoint (a run stopped before convergence): full map,
    poses and per-iteration history."""
    from cryolens.io.checkpoint import load_checkpoint

    prep = json.loads((out / "prepare.json").read_text())
    truth, gt = _truth(Path(prep["dataset"]), n)
    st = load_checkpoint(out / "cryolens" / "checkpoint.pt")
    ev = evaluate(st["full"].float(), st["rotations"], st["shifts"], truth, gt)
    out_d = {"program": "cryolens auto_refine (relion-refine3d), last checkpoint", "iterations": st["iteration"],
             "converged": bool(st["converged"]), "wall_s_iterations": st["elapsed_s"],
             "halfmap_0143_A": float(st["resolution"]), **ev,
             "history": [{k: v for k, v in h.items() if k != "fsc"} for h in st["history"]]}
    (out / "cryolens_checkpoint.json").write_text(json.dumps(out_d, indent=1))
    return out_d


LEDGER = "iteration_times.json"  # {iteration: seconds of RELION's own work since iteration 0}


def _current_resolution(model_star: Path) -> float | None:
    """``_rlnCurrentResolution`` (Å) of a RELION model STAR file, None when absent."""
    cur = [ln.split()[1] for ln in model_star.read_text().splitlines() if ln.startswith("_rlnCurrentResolution")]
    return float(cur[0]) if cur else None


def _iteration_models(rdir: Path) -> list[tuple[int, Path]]:
    """(iteration, ``run_itNNN_half1_model.star``) of every finished RELION iteration, in order."""
    return [(int(f.name[len("run_it"):len("run_it") + 3]), f) for f in sorted(rdir.glob("run_it*_half1_model.star"))]


def _relion_iteration_times(rdir: Path) -> list[tuple[int, float, float]]:
    """(iteration, seconds since iteration 0 was written, half-map resolution Å) of every finished iteration.
    Times come from the ledger ``iteration_times.json`` where it has them (a ``--continue`` rewrites the
    files of the iteration it starts from, so their stamps stop meaning anything), else from the files'
    modification times."""
    ledger = json.loads((rdir / LEDGER).read_text()) if (rdir / LEDGER).is_file() else {}
    rows = [(it, f.stat().st_mtime, _current_resolution(f)) for it, f in _iteration_models(rdir)]
    t0 = rows[0][1] if rows else 0.0
    return [(it, float(ledger.get(str(it), t - t0)), float("inf") if res is None else res) for it, t, res in rows]


def _record_relion_times(rdir: Path, since: float, base_s: float, after: int) -> None:
    """Write the ledger: the times known so far, and each iteration past ``after`` written by a run that
    started at ``since`` (epoch seconds) as ``base_s`` + its file's age since then."""
    times = {str(it): t for it, t, _ in _relion_iteration_times(rdir) if it <= after}
    times.update({str(it): base_s + f.stat().st_mtime - since for it, f in _iteration_models(rdir) if it > after})
    (rdir / LEDGER).write_text(json.dumps(times, indent=1))


def _read_relion_star(ds: Path, star: Path):
    """A STAR file RELION wrote, read from the dataset folder (its image paths are relative to where it ran)."""
    from cryolens.io.star import read_star

    cwd = os.getcwd()
    os.chdir(ds)
    try:
        return read_star(star)
    finally:
        os.chdir(cwd)


def _score_halves(halves: tuple[Path, Path], rotations: torch.Tensor, shifts: torch.Tensor, truth: torch.Tensor,
                  gt: dict) -> dict:
    """:func:`evaluate` of the mean of two half maps (an iteration's map, scored alike for both programs)."""
    from cryolens.io.mrc import read_volume

    h1, h2 = (np.asarray(read_volume(h)[0], np.float32) for h in halves)
    ev = evaluate(torch.from_numpy(0.5 * (h1 + h2)), rotations, shifts, truth, gt)
    ev.pop("fsc_vs_truth")
    return ev


def evaluate_relion_iterations(out: Path, n: int) -> dict:
    """Each finished RELION iteration scored against the truth: the mean of its two half maps, its poses
    (run_itNNN_data.star), with its half-map resolution estimate and its time since iteration 0."""
    prep = json.loads((out / "prepare.json").read_text())
    ds = Path(prep["dataset"])
    truth, gt = _truth(ds, n)
    rdir = (out / "relion").resolve()
    rows = []
    for it, t, res in _relion_iteration_times(rdir):
        if it == 0:
            continue
        data = _read_relion_star(ds, rdir / f"run_it{it:03d}_data.star")
        halves = tuple(rdir / f"run_it{it:03d}_half{h}_class001.mrc" for h in (1, 2))
        rows.append({"iteration": it, "since_iteration0_s": t, "halfmap_0143_A": res,
                     **_score_halves(halves, data.rotations, data.shifts, truth, gt)})
    out_d = {"program": "relion_refine 3.1 --auto_refine, per finished iteration", "iterations": rows}
    (out / "relion_iterations.json").write_text(json.dumps(out_d, indent=1))
    return out_d


def run_relion(out: Path, n: int, threads: int, timeout: float, resume: bool = False) -> dict:
    from cryolens.io.mrc import read_volume

    prep = json.loads((out / "prepare.json").read_text())
    ds = Path(prep["dataset"])
    truth, gt = _truth(ds, n)
    rdir = (out / "relion").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    # the gold-standard split needs the MPI build: 1 master + 2 workers (one per half-set), 1 thread each
    args = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(threads + 1), "relion_refine_mpi",
            "--o", str(rdir / "run"), "--i", Path(prep["star"]).name,
            "--ref", str((out / "truth.mrc").resolve()), "--ini_high", str(LOWPASS), "--auto_refine",
            "--split_random_halves", "--ctf", "--healpix_order", "2", "--auto_local_healpix_order", "4",
            "--offset_range", "5", "--offset_step", "2", "--particle_diameter", "80", "--flatten_solvent",
            "--zero_mask", "--low_resol_join_halves", "40", "--pad", "2", "--sym", "C1", "--oversampling", "1",
            "--dont_combine_weights_via_disc", "--pool", "3", "--j", "1",
            # the start map is not on RELION's grey scale (GUI: "Ref. map is on absolute greyscale? No")
            "--firstiter_cc"]
    before_s, last_it = 0.0, 0
    if resume:  # continue from the last finished iteration (RELION's own --continue), same root name
        last = sorted(rdir.glob("run_it*_optimiser.star"))
        if not last:
            raise SystemExit(f"--resume: no run_it*_optimiser.star in {rdir}")
        done = _relion_iteration_times(rdir)
        before_s, last_it = done[-1][1], done[-1][0]  # wall of the finished iterations
        _record_relion_times(rdir, time.time(), before_s, last_it)  # before --continue rewrites their files
        args = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(threads + 1), "relion_refine_mpi",
                "--continue", str(last[-1]), "--o", str(rdir / "run"), "--dont_combine_weights_via_disc",
                "--pool", "3", "--j", "1"]
    load0 = os.getloadavg()[0]
    t0, c0, since = time.perf_counter(), _cpu(), time.time()
    timed_out = False
    try:
        with open(rdir / ("relion_continue.log" if resume else "relion_refine.log"), "a" if resume else "w") as log:
            try:
                proc = subprocess.run(args, cwd=ds, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:  # also when stopped from outside: the iterations it finished keep their times
        _record_relion_times(rdir, since, before_s, last_it)
    wall, cpu = time.perf_counter() - t0 + before_s, _cpu() - c0
    iters = _iteration_models(rdir)
    if timed_out:  # what it had reached: the last finished iteration
        out_d = {"program": "relion_refine 3.1 --auto_refine", "threads": threads, "command": " ".join(args),
                 "timed_out_after_s": wall, "cpu_s": cpu, "iterations_finished": len(iters),
                 "last_iteration_resolution_A": _current_resolution(iters[-1][1]) if iters else None,
                 "continued_after_s": before_s, "iteration_times": _relion_iteration_times(rdir)}
        (out / "relion.json").write_text(json.dumps(out_d, indent=1))
        return out_d
    if proc.returncode != 0:
        raise RuntimeError(f"relion_refine failed ({proc.returncode}); see {log.name}")
    data = _read_relion_star(ds, rdir / "run_data.star")
    vol, _ = read_volume(rdir / "run_class001.mrc")
    ev = evaluate(torch.from_numpy(np.asarray(vol, dtype=np.float32)), data.rotations, data.shifts, truth, gt)
    out_d = {"program": "relion_refine 3.1 --auto_refine", "threads": threads, "command": " ".join(args),
             "wall_s": wall, "cpu_s": cpu, "load_before": load0, "load_after": os.getloadavg()[0],
             "continued_after_s": before_s, "iteration_times": _relion_iteration_times(rdir),
             "iterations": len(iters), "halfmap_0143_A": _current_resolution(rdir / "run_model.star"), **ev}
    (out / "relion.json").write_text(json.dumps(out_d, indent=1))
    return out_d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("prepare", "cryolens", "relion", "evaluate", "relion-evaluate", "all"),
                    default="all")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-iterations", type=int, default=30)
    ap.add_argument("--resume", action="store_true",
                    help="cryolens phase: continue from its checkpoint; relion phase: --continue from the last "
                         "finished iteration (wall time = finished iterations' file stamps + the continuation)")
    ap.add_argument("--relion-timeout", type=float, default=6 * 3600)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or DATA / f"refine_n{a.n}"
    if a.phase in ("prepare", "all"):
        print(json.dumps(prepare(out, a.n), indent=1))
    if a.phase in ("cryolens", "all"):
        r = run_cryolens(out, a.n, a.threads, a.max_iterations, a.resume)
        print(json.dumps({k: v for k, v in r.items() if k not in ("history", "fsc_vs_truth")}, indent=1))
    if a.phase == "evaluate":
        r = evaluate_checkpoint(out, a.n)
        print(json.dumps({k: v for k, v in r.items() if k != "fsc_vs_truth"}, indent=1))
    if a.phase == "relion-evaluate":
        print(json.dumps(evaluate_relion_iterations(out, a.n), indent=1))
    if a.phase in ("relion", "all"):
        r = run_relion(out, a.n, a.threads, a.relion_timeout, a.resume)
        print(json.dumps({k: v for k, v in r.items() if k != "fsc_vs_truth"}, indent=1))


if __name__ == "__main__":
    main()

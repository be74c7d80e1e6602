"""Time to the same resolution: the whole command ``cryolens refine`` (recipe relion-refine3d) against RELION 3.1's
``relion_refine_mpi --auto_refine --split_random_halves`` on the same particles from the same start map.

Data: the first ``--n`` images of ``bench_refine.py``'s 4E43 set (D = 64, 1.5 Å/px, CTF, shifts ≤ 3 px, SNR 0.1),
one STAR read by both. Start: the ground truth low-passed to 20 Å (cryolens ``--init-map truth.mrc --lowpass 20``;
RELION ``--ref truth.mrc --ini_high 20 --firstiter_cc``). Each program runs as its own process under
``/usr/bin/time -v``, one after the other (never at once), alternating, ``--repeats`` times each, on ``--threads``
cores: cryolens with ``OMP_NUM_THREADS=THREADS`` (torch threads), RELION as ``mpirun -np THREADS+1
relion_refine_mpi ... --j 1`` (a master and one single-thread worker per half-set; the options of
``bench_refine.py``'s relion phase). Per run: wall, CPU (user + system), peak RSS of the largest process
(``/usr/bin/time``) and of the whole process tree (the sum over its processes, sampled every 0.5 s).

Per iteration (time = the newest of that iteration's files, ``iterNNN_*`` / ``run_itNNN_*``, since the process
started): the mean of its two unfiltered half maps against the truth (FSC 0.5), the FSC of the half maps at
0.143 computed by the same code for both (and each program's own estimate), median rotation error after one
global alignment. Target: the worse of the two programs' best FSC-vs-truth resolutions in the same repeat;
the time each first reaches it (and 5 % above it) and the ratio cryolens / RELION; the same for the half-map 0.143
estimates.

  PYTHONPATH=$PWD/src .venv/bin/python benchmarks/bench_refine_command.py --n 500 --repeats 2 --threads 2 \\
      --timeout-cryolens 600 --timeout-relion 900 --out /tmp/refine_cmd
  PYTHONPATH=$PWD/src .venv/bin/python benchmarks/bench_refine_command.py --out /tmp/refine_cmd --table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent


TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> tuple[int, dict[int, float]]:
    """Sum of VmRSS (KiB) over ``root`` and its descendants, and each one's CPU time so far (user + system, s),
    read from /proc."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stats[int(d)] = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(stats[int(d)][1]), []).append(int(d))
    total, cpu, todo = 0, {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        cpu[pid] = (int(stats[pid][11]) + int(stats[pid][12])) / TICK if pid in stats else 0.0
        try:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total, cpu


def timed_run(cmd: list[str], log: Path, cwd: Path | None, env: dict, timeout: float) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``: start (epoch s), wall, CPU and peak RSS of its largest process
    (``/usr/bin/time``; MPI ranks stopped at the timeout are not in them), and CPU and peak RSS of its process tree
    (the sum over its processes, sampled every 0.5 s; MiB). Past ``timeout`` s its children are sent SIGTERM."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        peak, timed_out, cpu = 0, False, {}
        while proc.poll() is None:
            rss, now = _tree(proc.pid)
            peak, cpu = max(peak, rss), {**cpu, **now}
            if time.time() - t0 > timeout and not timed_out:
                timed_out = True  # stop what /usr/bin/time started (by parent id), so that it still reports
                subprocess.run(["pkill", "-TERM", "-P", str(proc.pid)], check=False)
            time.sleep(0.5)
    wall = time.time() - t0
    if proc.returncode and not timed_out:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    from bench_commands import time_v

    report = time_v(log.read_text())
    return {"start_epoch": t0, "wall_s": wall, "timed_out": timed_out, "cpu_s": report["cpu_s"],
            "peak_rss_mib": report["peak_rss_mib"], "cpu_tree_s": sum(cpu.values()), "peak_tree_rss_mib": peak / 1024}


def commands(out: Path, star: Path, threads: int, k: int) -> dict[str, tuple[list[str], Path | None, dict, Path]]:
    """name → (command, working folder, environment, run folder) of repeat ``k``."""
    from bench_refine import LOWPASS

    truth = str((out / "truth.mrc").resolve())
    cl_dir, rl_dir = out / f"cryolens_{k}", out / f"relion_{k}"
    rl_dir.mkdir(parents=True, exist_ok=True)
    n_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cryolens = [str(BIN / "cryolens"), "refine", str(star), "--init-map", truth, "--lowpass", f"{LOWPASS:g}",
                "--out", str(cl_dir), "--quiet"]
    relion = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(threads + 1), "relion_refine_mpi",
              "--o", str(rl_dir / "run"), "--i", star.name, "--ref", truth, "--ini_high", f"{LOWPASS:g}",
              "--auto_refine", "--split_random_halves", "--ctf", "--healpix_order", "2",
              "--auto_local_healpix_order", "4", "--offset_range", "5", "--offset_step", "2",
              "--particle_diameter", "80", "--flatten_solvent", "--zero_mask", "--low_resol_join_halves", "40",
              "--pad", "2", "--sym", "C1", "--oversampling", "1", "--dont_combine_weights_via_disc", "--pool", "3",
              "--j", "1", "--firstiter_cc"]
    return {"cryolens refine": (cryolens, None, {**os.environ, **n_threads}, cl_dir),
            # RELION reads the stack names relative to where it runs: the STAR file's folder
            "relion_refine_mpi": (relion, star.parent, {**os.environ, "OMP_NUM_THREADS": "1"}, rl_dir)}


def _iteration_files(run_dir: Path, relion: bool) -> dict[int, list[Path]]:
    """iteration → its files (RELION ``run_itNNN_*``, iteration 0 left out; cryolens ``iterNNN_*``)."""
    pat = re.compile(r"run_it(\d{3})_" if relion else r"iter(\d{3})_")
    its: dict[int, list[Path]] = {}
    for f in run_dir.iterdir():
        m = pat.match(f.name)
        if m and int(m.group(1)) > 0:
            its.setdefault(int(m.group(1)), []).append(f)
    return dict(sorted(its.items()))


def score_run(run_dir: Path, start: float, relion: bool, ds: Path, n: int) -> list[dict]:
    """Each finished iteration of a run: time since the process started, resolutions, pose error."""
    from bench_refine import APIX, BOX, _current_resolution, _read_relion_star, _score_halves, _truth
    from cryolens.io.mrc import read_volume
    from cryolens.io.star import read_star
    from cryolens.metrics.fsc import fsc, resolution_at

    import torch

    truth, gt = _truth(ds, n)
    rows = []
    for it, files in _iteration_files(run_dir, relion).items():
        if relion:
            halves = tuple(run_dir / f"run_it{it:03d}_half{h}_class001.mrc" for h in (1, 2))
            if not all(h.is_file() for h in halves) or not (run_dir / f"run_it{it:03d}_data.star").is_file():
                continue  # an iteration stopped while writing
            data = _read_relion_star(ds, run_dir / f"run_it{it:03d}_data.star")
            own = _current_resolution(run_dir / f"run_it{it:03d}_half1_model.star")
        else:
            halves = tuple(run_dir / f"iter{it:03d}_half{h}.mrc" for h in (1, 2))
            if not (run_dir / f"iter{it:03d}_particles.star").is_file():
                continue
            data = read_star(run_dir / f"iter{it:03d}_particles.star")
            own = json.loads((run_dir / f"iter{it:03d}_fsc.json").read_text())["resolution_A"]
        h1, h2 = (torch.from_numpy(np.asarray(read_volume(h)[0], np.float32)) for h in halves)
        ev = _score_halves(halves, data.rotations, data.shifts, truth, gt)
        rows.append({"iteration": it, "time_s": max(f.stat().st_mtime for f in files) - start,
                     "resolution_vs_truth_05_A": ev["resolution_vs_truth_05_A"],
                     "halfmap_0143_A": float(resolution_at(np.asarray(fsc(h1, h2)), 0.143, APIX, BOX)),
                     "own_estimate_A": own, "rotation_error_median_deg": ev["rotation_error_median_deg"],
                     "shift_error_median_px": ev["shift_error_median_px"]})
    return rows


def time_to(rows: list[dict], key: str, target: float) -> float | None:
    """Time of the first iteration at ``target`` Å or better by ``key`` (None: never)."""
    return next((r["time_s"] for r in rows if r[key] <= target + 1e-6), None)


MEASURES = {"resolution_vs_truth_05_A": "FSC vs truth 0.5", "own_estimate_A": "half-map 0.143, each program's own"}


def compare(cl: list[dict], rl: list[dict]) -> list[dict]:
    """Common targets (the worse of the two programs' bests, and 5 % above it) and each program's time to first
    reach them, for both resolution measures."""
    out = []
    for key, label in MEASURES.items():
        if not cl or not rl:
            continue
        target = max(min(r[key] for r in cl), min(r[key] for r in rl))
        for slack in (1.0, 1.05):
            tc, tr = time_to(cl, key, slack * target), time_to(rl, key, slack * target)
            out.append({"measure": label + ("" if slack == 1 else ", within 5 %"), "target_A": slack * target,
                        "cryolens_s": tc, "relion_s": tr, "ratio": tc / tr if tc and tr else None})
    return out


def table(res: dict) -> str:
    """Markdown: per run the wall, CPU, peak RSS; the times to the common targets; per iteration its time and
    resolutions."""
    names = ("cryolens refine", "relion_refine_mpi")
    lines = ["| run | program | wall | CPU (process tree) | peak RSS (tree; largest process) | iterations "
             "| best vs truth | best half-map (own) |", "|---" * 8 + "|"]
    for k, pair in enumerate(res["runs"]):
        for name in (n for n in names if n in pair):
            r, its = pair[name], pair[name]["iterations"]
            lines.append(f"| {k + 1} | {name} | {r['wall_s']:,.0f} s{' (stopped)' if r['timed_out'] else ''} "
                         f"| {r['cpu_tree_s']:,.0f} s | {r['peak_tree_rss_mib']:,.0f}; {r['peak_rss_mib']:,.0f} MiB "
                         f"| {len(its)} | {min(x['resolution_vs_truth_05_A'] for x in its):.2f} Å "
                         f"| {min(x['own_estimate_A'] for x in its):.2f} Å |")
    lines += ["", "| run | measure | common target | cryolens reaches it | RELION reaches it | ratio |",
              "|---" * 6 + "|"]
    for k, pair in enumerate(res["runs"]):
        if all(n in pair for n in names):
            for c in compare(pair[names[0]]["iterations"], pair[names[1]]["iterations"]):
                ratio = f"**{c['ratio']:.3f}×**" if c["ratio"] else "—"
                lines.append(f"| {k + 1} | {c['measure']} | {c['target_A']:.2f} Å | {c['cryolens_s']:,.0f} s "
                             f"| {c['relion_s']:,.0f} s | {ratio} |")
    lines += ["", "| run | program | iteration | time since start | FSC vs truth 0.5 | half-map 0.143 (own) "
              "| median rot. error |", "|---" * 7 + "|"]
    for k, pair in enumerate(res["runs"]):
        for name in names:
            for x in pair.get(name, {}).get("iterations", []):
                lines.append(f"| {k + 1} | {name} | {x['iteration']} | {x['time_s']:,.0f} s "
                             f"| {x['resolution_vs_truth_05_A']:.2f} Å | {x['own_estimate_A']:.2f} Å "
                             f"| {x['rotation_error_median_deg']:.1f}° |")
    return "\n".join(lines)


def main() -> None:
    from bench_refine import prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout-cryolens", type=float, default=1200)
    ap.add_argument("--timeout-relion", type=float, default=1200)
    ap.add_argument("--only", choices=("cryolens refine", "relion_refine_mpi"), help="run one program (pilot)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--table", action="store_true", help="print the Markdown tables of OUT/refine_command.json")
    a = ap.parse_args()
    out = a.out.resolve()
    if a.table:
        print(table(json.loads((out / "refine_command.json").read_text())))
        return
    prep = prepare(out, a.n) if not (out / "prepare.json").is_file() else json.loads((out / "prepare.json").read_text())
    star, ds = Path(prep["star"]).resolve(), Path(prep["dataset"])
    timeouts = {"cryolens refine": a.timeout_cryolens, "relion_refine_mpi": a.timeout_relion}
    runs: list[dict] = []
    for k in range(a.repeats):  # alternating, one program at a time
        pair = {}
        for name, (cmd, cwd, env, run_dir) in commands(out, star, a.threads, k).items():
            if a.only and name != a.only:
                continue
            load = os.getloadavg()
            r = timed_run(cmd, out / f"{name.split()[0]}_{k}.log", cwd, env, timeouts[name])
            r.update(load_before=load, load_after=os.getloadavg(), command=" ".join(cmd))
            r["iterations"] = score_run(run_dir, r["start_epoch"], name.startswith("relion"), ds, a.n)
            pair[name] = r
            print(name, k, json.dumps({x: v for x, v in r.items() if x not in ("iterations", "command")}), flush=True)
            for row in r["iterations"]:
                print("   ", json.dumps(row), flush=True)
        if len(pair) == 2:
            pair["to_common_target"] = compare(pair["cryolens refine"]["iterations"],
                                               pair["relion_refine_mpi"]["iterations"])
            print("to_common_target", json.dumps(pair["to_common_target"]), flush=True)
        runs.append(pair)
        (out / "refine_command.json").write_text(json.dumps({"n": a.n, "threads": a.threads, "prepare": prep,
                                                             "runs": runs}, indent=1))


if __name__ == "__main__":
    main()

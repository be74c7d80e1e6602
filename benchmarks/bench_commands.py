"""Whole commands as a user times them: ``cryolens backproject`` against ``relion_reconstruct`` on the same
STAR file, and the start-up of ``cryolens --help`` and ``cryolens info``.

Each command runs under ``/usr/bin/time -v`` as its own process (imports, reading, writing, report
included), the two programs alternating, ``--repeats`` times each; reported: the median wall time, CPU
time (user + system) and peak RSS of each, and the ratios cryolens / RELION. Default threads for both
(what a user gets). Dataset: the STAR given, or the 5,000-image 4E43 set of ``bench_refine.py`` (D = 64,
1.5 Å/px, CTF, shifts ≤ 3 px, SNR 0.1), first ``--n`` images.

  .venv/bin/python benchmarks/bench_commands.py --n 5000 --repeats 3 --out /tmp/bench_commands

``--box 128 --n 5000`` simulates (once, under ``benchmarks/_data``) and times a 4E43 set at D = 128.
``--baseline-src OTHER/src`` adds that checkout's ``backproject`` and ``info`` (run with ``PYTHONPATH``) to the
alternation, so that a change is measured against its base under the same load. ``--commands`` times a subset
(e.g. ``--box 128 --n 50000 --repeats 1 --commands 'cryolens backproject,relion_reconstruct'``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent


def timed(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v`` (in ``cwd``, with ``env``): wall s, CPU s, peak RSS MiB (a failure
    stops the benchmark)."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd, env=env)
    log.write_text(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}); see {log}")
    return time_v(out.stderr)


def time_v(text: str) -> dict:
    """Wall s, CPU s (user + system) and peak RSS MiB of the largest process from ``/usr/bin/time -v``'s report."""
    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.+)", text).group(1).strip()

    h, m, s = (["0"] + field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"))[-3:]
    return {"wall_s": int(h) * 3600 + int(m) * 60 + float(s),
            "cpu_s": float(field("User time (seconds)")) + float(field("System time (seconds)")),
            "peak_rss_mib": int(field("Maximum resident set size (kbytes)")) / 1024}


def summary(runs: list[dict]) -> dict:
    return {k: float(np.median([r[k] for r in runs])) for k in ("wall_s", "cpu_s", "peak_rss_mib")}


def simulated_set(box: int, n: int) -> Path:
    """The STAR of ``n`` 4E43 images at ``box`` px (1.5 Å/px, SNR 0.1, CTF, shifts ≤ 3 px, seed 0), simulated
    under ``benchmarks/_data`` the first time."""
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model, simulate_dataset, volumes_from_models

    out = HERE / "_data" / f"4E43_D{box}_apix1.5_n{n}_snr0.1_shift3_seed0"
    if not (out / "particles.star").is_file():
        vol = volumes_from_models([read_atoms(bundled_model("4E43"))], box, 1.5)
        simulate_dataset(out, vol, n, 1.5, 0.1, shift_std=1.5, shift_max=3.0, seed=0, progress=False)
    return out / "particles.star"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--star", type=Path, help="particles (default: the 4E43 set of bench_refine.py)")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--box", type=int, default=64,
                    help="64: bench_refine.py's set; another D: a 4E43 set of N images simulated at that box (once)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--baseline-src", type=Path,
                    help="another checkout's src/: its backproject and info run too (PYTHONPATH), alternating")
    ap.add_argument("--commands", help="comma-separated names of the commands to time (default: all), e.g. "
                                       "'cryolens backproject,relion_reconstruct' for a large set")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    star = args.star
    if star is None and args.box != 64:
        star = simulated_set(args.box, args.n)
    if star is None:
        from bench_refine import prepare

        star = Path(prepare(args.out, args.n)["star"])
    star = star.resolve()
    args.out = args.out.resolve()
    cryolens = str(BIN / "cryolens")
    commands = {
        "cryolens backproject": [cryolens, "backproject", str(star), "--out", str(args.out / "run"), "--quiet"],
        "cryolens backproject --no-report": [cryolens, "backproject", str(star), "--out", str(args.out / "fast"),
                                             "--quiet", "--no-report"],
        "relion_reconstruct": ["relion_reconstruct", "--i", str(star), "--o", str(args.out / "relion.mrc"), "--ctf",
                               "--pad", "2"],
        "cryolens --help": [cryolens, "--help"],
        "cryolens info": [cryolens, "info", str(star)],
    }
    envs = {name: None for name in commands}
    if args.baseline_src is not None:
        base_env = {**os.environ, "PYTHONPATH": str(args.baseline_src.resolve())}
        for name in ("cryolens backproject", "cryolens info"):
            cmd = [str(args.out / "baseline") if c == str(args.out / "run") else c for c in commands[name]]
            commands[f"{name} (baseline)"], envs[f"{name} (baseline)"] = cmd, base_env
    if args.commands:
        wanted = [c.strip() for c in args.commands.split(",")]
        unknown = [c for c in wanted if c not in commands]
        if unknown or "relion_reconstruct" not in wanted:
            raise SystemExit(f"--commands: unknown {unknown} (known: {list(commands)}); relion_reconstruct is needed")
        commands = {k: v for k, v in commands.items() if k in wanted}
    runs: dict[str, list[dict]] = {k: [] for k in commands}
    for k in range(args.repeats):  # alternating, so that a change of load hits every command alike
        for name, cmd in commands.items():
            # RELION reads the stack names relative to where it runs: the STAR file's folder
            cwd = star.parent if name.startswith("relion") else None
            log = args.out / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_{k}.log"
            runs[name].append(timed(cmd, log, cwd, envs[name]))
            print(name, json.dumps(runs[name][-1]), flush=True)
    med = {name: summary(r) for name, r in runs.items()}
    relion = med["relion_reconstruct"]
    ratios = {name: {k: med[name][k] / relion[k] for k in relion} for name in commands if "backproject" in name}
    res = {"star": str(star), "repeats": args.repeats, "median": med, "vs_relion_reconstruct": ratios, "runs": runs}
    (args.out / "commands.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({"median": med, "vs_relion_reconstruct": ratios}, indent=1))


if __name__ == "__main__":
    main()

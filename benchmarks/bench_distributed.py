"""Refinement on several processes against one: wall time, per-rank peak memory and the answer.

The 5,000-image 4E43 set of ``bench_refine.py`` (D = 64, 1.5 Å/px, SNR 0.1, CTF, shifts ≤ 3 px; the
first ``--n`` images), refined by ``cryolens refine`` (recipe ``relion-refine3d``, start: the truth
low-passed to 20 Å, ``--max-iterations K``) as a whole command, one thread per process:

- 1 process;
- ``--ranks`` processes started the way ``torchrun`` starts them (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``/``PORT`` in the environment; gloo), each under ``/usr/bin/time -v`` so that every
  rank's own peak RSS is measured.

The runs alternate (1, R, 1, R, …, ``--repeats`` pairs). Reported: median wall time of each and their
ratio, each rank's peak RSS, the FSC between the two final maps (min over shells), the largest pose
difference between the runs, and each run's per-rank seconds in the E-step, the M-step, writing and waiting
in collectives (metrics ``rank_seconds``, :mod:`cryolens.inference.rank_timing`). Results go to
``--out``/distributed.json.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed.py --n 5000 --iterations 3 \\
      --ranks 2 --repeats 1 --out /tmp/bench_dist
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _peak_rss_mib(time_file: Path) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


def run(star: str, start: Path, out: Path, ranks: int, iterations: int) -> dict:
    """One whole ``cryolens refine`` on ``ranks`` processes; returns wall time and per-rank peak RSS."""
    cmd = [str(BIN / "cryolens"), "refine", star, "--init-map", str(start), "--lowpass", "20",
           "--max-iterations", str(iterations), "--quiet", "--out", str(out)]
    port = _free_port()
    procs = []
    t0 = time.perf_counter()
    for r in range(ranks):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if ranks > 1:
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port)
        procs.append(subprocess.Popen(["/usr/bin/time", "-v", "-o", str(out) + f".rank{r}.time", *cmd], env=env,
                                      stdout=subprocess.DEVNULL if r else None))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"cryolens refine on {ranks} process(es) failed: exit codes {codes}")
    return {"ranks": ranks, "wall_s": wall,
            "peak_rss_mib": [_peak_rss_mib(Path(str(out) + f".rank{r}.time")) for r in range(ranks)]}


def compare(a: Path, b: Path) -> dict:
    """FSC between the two runs' maps and the largest pose difference (degrees of each Euler angle, Å)."""
    import mrcfile
    import starfile
    import torch

    from cryolens.metrics.fsc import fsc

    maps = [torch.from_numpy(mrcfile.read(p / "map.mrc").astype(np.float32)) for p in (a, b)]
    curve = np.asarray(fsc(*maps))
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    pa, pb = (starfile.read(p / "particles.star")["particles"][cols].to_numpy() for p in (a, b))
    diff = np.abs(pa - pb)
    diff[:, :3] = np.minimum(diff[:, :3], 360 - diff[:, :3])
    metrics = [json.loads((p / "metrics.json").read_text()) for p in (a, b)]
    return {"fsc_min": float(curve[1:].min()), "max_angle_diff_deg": float(diff[:, :3].max()),
            "max_shift_diff_A": float(diff[:, 3:].max()), "images_with_other_pose": int((diff.max(1) > 1e-3).sum()),
            "halfmap_resolution_A": [m.get("resolution_halfmap_0143_A") for m in metrics],
            "rank_seconds": [m.get("rank_seconds") for m in metrics]}  # per rank: E-step, M-step, writes, waits


def main() -> None:
    from bench_refine import prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prep = prepare(args.out, args.n)
    runs: dict[int, list[dict]] = {1: [], args.ranks: []}
    for k in range(args.repeats):
        for ranks in (1, args.ranks):
            r = run(prep["star"], args.out / "truth.mrc", args.out / f"run{ranks}_{k}", ranks, args.iterations)
            print(json.dumps(r), flush=True)
            runs[ranks].append(r)
    med = {r: float(np.median([x["wall_s"] for x in v])) for r, v in runs.items()}
    res = {"n": args.n, "iterations": args.iterations, "runs": runs, "median_wall_s": med,
           "ratio": med[args.ranks] / med[1], "load_average_end": os.getloadavg(),
           "same_answer": compare(args.out / "run1_0", args.out / f"run{args.ranks}_0")}
    (args.out / "distributed.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("median_wall_s", "ratio", "same_answer")}, indent=1))


if __name__ == "__main__":
    main()

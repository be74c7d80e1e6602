"""Back-projection time: cryolens vs relion_reconstruct --ctf on the same STAR file, same run.

Data: the simulated 4E43 dataset of bench_endtoend.py (D = 64, 1.5 Å/px, SNR 0.1, CTF, shifts;
cached under benchmarks/_data/), and a STAR file of its first N images for each N asked for.
  cryolens — `read_star` + `backproject(pad=2, batch_size=256)` in this process, torch with
             `--threads` threads (torch.set_num_threads);
  RELION   — `relion_reconstruct --i STAR --o OUT --pad 2 --ctf` (RELION 3.1.3), one process, run in
             the dataset folder; relion_reconstruct has no threads option (its MPI/threads
             parallelism lives in relion_refine, not here), so it uses one core.
Each (N, program) is timed `--repeats` times, the two programs alternating; the table gives the best
wall time, the median wall time and the CPU time (user + system) of the best run, and the ratio
t_cryolens / t_relion of the best wall times (goal ≤ 0.5) and of the CPU times.
`--profile` then runs cryolens once more under cProfile and prints where the time goes.

  .venv/bin/python benchmarks/bench_backproject.py [--sizes 2000,5000] [--threads 2] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import tempfile
from pathlib import Path

import torch

from bench_endtoend import ensure_dataset, load_average, relion_version, time_cryolens, time_relion


def subset_star(dataset: Path, n: int) -> Path:
    """STAR file of the first ``n`` particles of ``dataset`` (written beside its particles.star)."""
    from cryolens.io.star import read_star, write_star

    path = dataset / f"particles_first{n}.star"
    if not path.is_file():
        p = read_star(dataset / "particles.star")
        if n > len(p):
            raise SystemExit(f"{dataset}: has {len(p)} particles, fewer than {n}")
        write_star(path, p.subset(range(n)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,5000", help="numbers of images, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile one cryolens run at the largest size")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    ds = ensure_dataset(max(5000, max(sizes)))
    print(f"dataset {ds.name}; torch {torch.__version__}, {a.threads} threads; {relion_version()} (one process)")
    print(f"load average before: {load_average()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_bp_") as tmp:
        for n in sizes:
            star = subset_star(ds, n)
            ours, rel = [], []
            for _ in range(a.repeats):
                _, t, c = time_cryolens(star)
                ours.append((t, c))
                _, t, c = time_relion(star, Path(tmp) / f"relion_{n}.mrc")
                rel.append((t, c))
            bo, br = min(ours), min(rel)
            rows.append({"n": n, "cryolens_best_s": bo[0], "cryolens_median_s": statistics.median(t for t, _ in ours),
                         "cryolens_cpu_s": bo[1], "relion_best_s": br[0],
                         "relion_median_s": statistics.median(t for t, _ in rel), "relion_cpu_s": br[1],
                         "ratio_wall": bo[0] / br[0], "ratio_cpu": bo[1] / br[1],
                         "cryolens_all_s": [t for t, _ in ours], "relion_all_s": [t for t, _ in rel]})
    print("| N | cryolens best / median wall (s) | CPU (s) | relion_reconstruct best / median wall (s) | CPU (s) |"
          " t_cryolens / t_relion (wall) | (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['cryolens_best_s']:.2f} / {r['cryolens_median_s']:.2f} | {r['cryolens_cpu_s']:.1f} |"
              f" {r['relion_best_s']:.2f} / {r['relion_median_s']:.2f} | {r['relion_cpu_s']:.1f} |"
              f" {r['ratio_wall']:.2f} | {r['ratio_cpu']:.2f} |")
    print(f"load average after: {load_average()}")
    if a.profile:
        star = subset_star(ds, max(sizes))
        prof = cProfile.Profile()
        prof.enable()
        time_cryolens(star)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        print(buf.getvalue())
    if a.json:
        out = {"threads": a.threads, "rows": rows, "load_after": load_average()}
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

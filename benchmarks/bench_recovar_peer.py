"""RECOVAR 1.0.5 as a benchmark peer on the smallest task: the tiny suite's continuous task (160 images,
D = 16) through the runner, beside back-projection; prints each row's status, wall time and scores.

    OMP_NUM_THREADS=1 CRYOLENS_RECOVAR=~/.cache/cryolens/recovar-venv PYTHONPATH=src \\
        nice -n 10 /work/main/.venv/bin/python benchmarks/bench_recovar_peer.py /tmp/rv_bench [--clusters 10]

RECOVAR's pipeline time at this size is its JIT compilation; the run shows the smallest wall time a
``recovar`` row can take on this machine.
"""

from __future__ import annotations

import argparse
import time

from cryolens.bench.runner import available_methods, run_suite
from cryolens.bench.suite import load_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--task", default="continuous-poses-snr1")
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--zdim", type=int, default=4)
    a = ap.parse_args()
    tasks = [t for t in load_tasks("tiny") if t.name == a.task]
    t0 = time.time()
    rows = run_suite(tasks, available_methods(["recovar", "backprojection"]), a.out, budget_s=1800,
                     cache_dir=f"{a.out}/cache", halves=False,
                     overrides={"recovar": {"clusters": a.clusters, "zdim": a.zdim}})
    keys = ("per_image_fsc_auc_mean", "latent_truth_r2", "gt_auc", "method_recovar_total_s",
            "method_recovar_peak_rss_mib", "method_recovar_cpu_s")
    for r in rows:
        m = r.get("metrics", {})
        print(r["method"], r["status"], f"wall {r['wall_s']:.1f} s", {k: round(m[k], 4) for k in keys if k in m},
              r.get("error", ""))
    print(f"total {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()

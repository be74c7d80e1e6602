"""Training speed of `cryolens train cryodrgn` against cryoDRGN 4.3.1 `train_vae`, fp32, one thread each:
the same images, architecture (encoder and decoder 3 × 256, zdim 8, Gaussian features, Fourier output),
batch 8, Adam 1e-4 and epochs; runs alternated (cryoDRGN, cryolens, cryoDRGN, …) ``--pairs`` times and
summarised by medians (issue 29, the training-speed line). ``--base-src DIR``: a third side, cryolens from
another source tree (e.g. a copy of ``src/`` from before a change), alternated with the other two.

Per run: images per CPU-second of the whole process (user + system time, start-up and the final
encoding pass included: the measure least disturbed by other jobs on the machine), images per second
of the training epochs from each program's own log, whole-process wall seconds and peak RSS
(`cryolens.bench.cryodrgn.run_measured`). The dataset is `continuous_dataset.py`'s hinge set (D = 64).

  export CRYOLENS_CRYODRGN=$HOME/.cache/cryolens/cryodrgn-venv OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  PYTHONPATH=$PWD/src nice -n 10 /work/main/.venv/bin/python benchmarks/bench_drgn_speed.py \
      --n 2000 --images 1000 --pairs 3 --out /tmp/drgn_speed/baseline.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_cryodrgn import run_cryodrgn_part, run_ours  # noqa: E402
from continuous_dataset import ensure_continuous_dataset  # noqa: E402

KEYS = ("images_per_cpu_s", "images_per_s_epochs", "wall_s", "cpu_s", "peak_rss_mib")


def medians(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in KEYS}


def table(summary: dict) -> str:
    """A Markdown table of the medians, cryolens' ratio to cryoDRGN on the two speed columns."""
    theirs = summary["cryodrgn"]
    rows = ["| command | images/CPU-s | ratio | images/s (epoch) | ratio | wall s | CPU s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|"]
    names = {"cryodrgn": "cryoDRGN 4.3.1 `train_vae`", "cryolens": "cryolens `train cryodrgn`",
             "cryolens_before": "cryolens `train cryodrgn`, before"}
    for name, m in ((names[k], v) for k, v in summary.items()):
        r1 = m["images_per_cpu_s"] / theirs["images_per_cpu_s"]
        r2 = m["images_per_s_epochs"] / theirs["images_per_s_epochs"]
        rows.append(f"| {name} | {m['images_per_cpu_s']:.2f} | {r1:.2f}× | {m['images_per_s_epochs']:.2f} | "
                    f"{r2:.2f}× | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | {m['peak_rss_mib']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images of the simulated dataset")
    ap.add_argument("--images", type=int, default=1000, help="train on the first N images")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--only", choices=["both", "cryodrgn", "cryolens"], default="both")
    ap.add_argument("--out", required=True, help="JSON file of every run and the medians")
    ap.add_argument("--base-src", default=None, help="also run cryolens from this source folder (PYTHONPATH)")
    a = ap.parse_args()
    ns = argparse.Namespace(zdim=8, layers=a.layers, dim=a.dim, batch_size=8, threads=1, epochs=a.epochs,
                            nn_epochs=a.epochs, vae_images=a.images, nn_images=0)
    ds = ensure_continuous_dataset(n=a.n)
    work = ds / "bench_drgn_speed"
    work.mkdir(exist_ok=True)
    sides = ["cryodrgn", "cryolens"] if a.only == "both" else [a.only]
    if a.base_src:
        sides.append("cryolens_before")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    path = os.environ.get("PYTHONPATH", "")
    for pair in range(a.pairs):
        for side in sides:
            started = time.strftime("%H:%M:%S")
            if side == "cryodrgn":
                shutil.rmtree(work / "cryodrgn_vae", ignore_errors=True)
                r = run_cryodrgn_part("vae", ns, ds, work)
            else:  # the child process imports cryolens from PYTHONPATH
                os.environ["PYTHONPATH"] = str(Path(a.base_src).resolve()) if side == "cryolens_before" else path
                r = run_ours("cryodrgn", ns, ds, work)
                os.environ["PYTHONPATH"] = path
            r["started"] = started
            runs[side].append(r)
            print(f"pair {pair + 1} {side}: " + ", ".join(f"{k} {r[k]:.2f}" for k in KEYS), flush=True)
    summary = {side: medians(rs) for side, rs in runs.items() if rs}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "runs": runs, "medians": summary}, indent=1) + "\n")
    if "cryodrgn" in summary and len(summary) > 1:
        print(table(summary))


if __name__ == "__main__":
    main()

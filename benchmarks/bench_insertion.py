"""The Fourier insertion of ``cryolens backproject`` in one process: the compiled kernel against the pure-torch
scatter (``CRYOLENS_NATIVE=0``), alternating, medians of ``--repeats``.

Two timings per path: ``accumulate`` (read, transform, CTF, insert both half-sets: the back-projection's whole
streaming pass, default threads) and the scatter alone (``scatter_slices`` of prepared half slices into one
staging grid, one thread, ns per inserted slice pixel). Also the largest relative difference of the two paths'
sums (float32; the kernel computes the geometry in float64).

  PYTHONPATH=src .venv/bin/python benchmarks/bench_insertion.py \\
      --star benchmarks/_data/4E43_D64_apix1.5_n5000_snr0.1_shift3_seed0/particles.star --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from cryolens.imaging import native
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.slice import _pixel_multiplicity, scatter_slices, staging_grid
from cryolens.io.dataset import read_particles
from cryolens.methods.backprojection import accumulate


def timed_accumulate(particles) -> tuple[float, float, list[torch.Tensor]]:
    t, c = time.perf_counter(), time.process_time()
    halves = accumulate(particles, progress=False)
    return time.perf_counter() - t, time.process_time() - c, [h.staging for h in halves]


def timed_scatter(d: int, n: int, generator: torch.Generator) -> float:
    """Seconds per inserted slice pixel of ``scatter_slices`` (half slices, 64 images a call, one thread)."""
    sl = torch.randn(64, d, d, dtype=torch.complex64, generator=generator)
    w = torch.rand(64, d, d, generator=generator)
    rots = random_rotations(n, generator=generator)
    st = staging_grid(2 * d, 3)
    pixels = int(_pixel_multiplicity(d, True, torch.float32, torch.device("cpu"))[0].count_nonzero())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.perf_counter()
    for a in range(0, n, 64):
        scatter_slices(st, sl[:min(64, n - a)], rots[a:a + 64], 2 * d, w[:min(64, n - a)], hermitian=True)
    dt = time.perf_counter() - t
    torch.set_num_threads(threads)
    return dt / (n * pixels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--star", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scatter-images", type=int, default=2000, help="images of the scatter-alone timing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    particles = read_particles(args.star)
    if native.library() is None:
        raise SystemExit(f"no compiled kernel here: {native.unavailable_reason()}")
    runs: dict[str, dict[str, list[float]]] = {m: {"wall_s": [], "cpu_s": [], "scatter_ns_per_px": []}
                                               for m in ("compiled", "torch")}
    sums = {}
    g = torch.Generator().manual_seed(0)
    for _ in range(args.repeats):
        for mode in ("compiled", "torch"):
            os.environ["CRYOLENS_NATIVE"] = "1" if mode == "compiled" else "0"
            wall, cpu, st = timed_accumulate(particles)
            runs[mode]["wall_s"].append(wall)
            runs[mode]["cpu_s"].append(cpu)
            runs[mode]["scatter_ns_per_px"].append(timed_scatter(particles.box_size, args.scatter_images, g) * 1e9)
            sums[mode] = st
            print(mode, {k: round(v[-1], 3) for k, v in runs[mode].items()}, flush=True)
    os.environ.pop("CRYOLENS_NATIVE")
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(sums["compiled"], sums["torch"]))
    med = {m: {k: float(np.median(v)) for k, v in r.items()} for m, r in runs.items()}
    ratio = {k: med["torch"][k] / med["compiled"][k] for k in med["torch"]}
    out = {"star": str(args.star), "images": len(particles), "threads": torch.get_num_threads(), "median": med,
           "torch_over_compiled": ratio, "max_relative_difference_of_sums": diff, "runs": runs}
    print(json.dumps({k: out[k] for k in ("median", "torch_over_compiled", "max_relative_difference_of_sums")},
                     indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Peak memory of streaming back-projection (or cryoAI training): 10,000 vs 100,000 images (D = 64), each
in a fresh process.

Data: white-noise stacks (the content does not matter for memory; what matters is that the images
are streamed from disk), written with `cryolens.io.mrc.StackWriter` in chunks of 5,000, and a
RELION 3.1 STAR file per stack with uniform random poses, Gaussian shifts (std 2 px) and random
CTFs (`cryolens.simulate.random_ctf`). 100,000 × 64² × 4 B = 1.6 GB: the files go to --workdir
(default /tmp/cryolens_bench_memory) and are deleted at the end (--keep keeps them).

Each measurement runs `read_star` + `backproject(pad=2, batch_size=256)` in a child process
(`python bench_memory.py --child STAR`). Its peak resident set size is the child's own VmHWM
(/proc/self/status, read at its end: the high-water mark of its address space, fresh at exec);
`ru_maxrss` from `os.wait4` is printed beside it (Linux carries the parent's RSS at fork into a
child's ru_maxrss, so the parent stays lean: it never imports torch, and the stacks are written by
a child too). The child also samples /proc/self/status every 0.1 s for the peaks of its anonymous
(RssAnon) and file-backed (RssFile: pages of the memory-mapped stack) resident memory. A child
that only imports and reads the largest STAR file gives the floor (interpreter + torch +
metadata). Goal: peak RSS at 100k ≤ 1.2 × peak RSS at 10k.

`--workload cryoai` measures `cryolens train cryoai` instead (issue 6: 20,000 vs 100,000 images), run
in-process in the child through `cryolens.cli.main.main`: one epoch of `--epoch-images` images (the
engine's `epoch_images`, the head of the shuffled order: the number of optimiser steps does not grow
with N), then everything the command does after training over *all* N images: the encoder's pose of
every particle (the whole stack is read), the map, `poses.star`, `poses.npz`, plots and the report.
Network: the suite's CPU size (encoder 8 → 128 channels, FC 128; decoder 3 × 128), batch 32, no shifts.
Pose inference hands the heap's free pages back once per batch (`cryolens.memory.release_free_heap`).

`--drop-pages` repeats the measurement with one change made in the child only (cryolens itself is
not modified): after each batch is read, the whole memory map of the stack is told
`madvise(MADV_DONTNEED)`, so pages already read leave the process's resident set (they stay in the
kernel's page cache). This was the test of the fix; since commit bfc630c, `cryolens.io.dataset`
releases the pages it has read itself, so the two measurements should agree.

  .venv/bin/python benchmarks/bench_memory.py [--sizes 10000,100000] [--threads 2] [--workdir DIR] [--keep]
                                              [--drop-pages] [--workload cryoai --epoch-images 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    return out


class _Sampler(threading.Thread):
    """Peaks of RssAnon / RssFile (kB) of this process, sampled every ``period`` s."""

    def __init__(self, period: float = 0.1):
        super().__init__(daemon=True)
        self.period, self.peak, self._done = period, {"RssAnon": 0, "RssFile": 0}, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.period)

    def sample(self) -> None:
        s = _status_kb()
        for k in self.peak:
            self.peak[k] = max(self.peak[k], s.get(k, 0))

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        self.sample()
        return self.peak


def _patch_drop_pages() -> None:
    """Make cryolens.io.dataset drop the stack's mapped pages after every read (see module doc)."""
    import mmap

    import cryolens.io.dataset as ds

    read_rows = ds._read_rows

    def read_rows_then_drop(mm, idx):
        out = read_rows(mm, idx)
        m = getattr(mm, "_mmap", None)
        if m is not None:
            m.madvise(mmap.MADV_DONTNEED)
        return out

    ds._read_rows = read_rows_then_drop


def child(star: str, threads: int, backproject_too: bool, drop_pages: bool = False) -> None:
    """Run in a fresh process: read ``star`` (and back-project it); print a JSON line."""
    sampler = _Sampler()
    sampler.start()
    import torch

    torch.set_num_threads(threads)
    if drop_pages:
        _patch_drop_pages()
    from cryolens.io.star import read_star
    from cryolens.methods.backprojection import backproject

    t0 = time.perf_counter()
    particles = read_star(star)
    if backproject_too:
        backproject(particles, pad=2, batch_size=256, progress=False)
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    print(json.dumps({"n": len(particles), "wall_s": wall, "peak_rss_anon_kb": peak["RssAnon"],
                      "peak_rss_file_kb": peak["RssFile"], "vm_hwm_kb": _status_kb()["VmHWM"]}))


CRYOAI_SETS = ["dec_dim=128", "enc_channels=8", "enc_hidden=[128]", "amp=false", "pose_batch=256"]


def child_cryoai(star: str, threads: int, epoch_images: int, out: str) -> None:
    """Run in a fresh process: ``cryolens train cryoai`` on ``star`` (module docstring); print a JSON line."""
    sampler = _Sampler()
    sampler.start()
    import torch

    torch.set_num_threads(threads)
    from cryolens.cli.main import main as cryolens_main

    t0 = time.perf_counter()
    argv = ["train", "cryoai", star, "--out", out, "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--set", f"epoch_images={epoch_images}"]
    for kv in CRYOAI_SETS:
        argv += ["--set", kv]
    code = cryolens_main(argv)
    if code:
        raise SystemExit(code)
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    with np.load(Path(out) / "poses.npz") as poses:
        n = int(poses["rotations"].shape[0])
    print(json.dumps({"n": n, "wall_s": wall,
                      "peak_rss_anon_kb": peak["RssAnon"], "peak_rss_file_kb": peak["RssFile"],
                      "vm_hwm_kb": _status_kb()["VmHWM"]}))


def make_dataset(folder: Path, n: int, d: int = 64, pixel_size: float = 1.5, seed: int = 0,
                 chunk: int = 5000) -> Path:
    """Noise stack ``folder/particles.mrcs`` (written in chunks) and ``folder/particles.star``."""
    import torch

    from cryolens.imaging.rotations import random_rotations
    from cryolens.io.mrc import StackWriter
    from cryolens.io.particles import Particles
    from cryolens.io.star import write_star
    from cryolens.simulate import random_ctf, random_shifts

    folder.mkdir(parents=True, exist_ok=True)
    star = folder / "particles.star"
    if star.is_file():
        return star
    rng = np.random.default_rng(seed)
    with StackWriter(folder / "particles.mrcs", n, d, pixel_size) as w:
        for start in range(0, n, chunk):
            b = min(chunk, n - start)
            w.write(start, rng.standard_normal((b, d, d), dtype=np.float32))
    g = torch.Generator().manual_seed(seed)
    particles = Particles(pixel_size=pixel_size, box_size=d, image_files=[str(folder / "particles.mrcs")],
                          image_file_index=np.zeros(n, dtype=np.int64), image_index=np.arange(n),
                          rotations=random_rotations(n, generator=g), shifts=random_shifts(n, 2.0, 6.0, generator=g),
                          ctf=random_ctf(n, generator=g))
    write_star(star, particles)
    return star


def measure(args: list[str]) -> tuple[dict, int, float]:
    """Run ``bench_memory.py --child ...``; return (its JSON line, its ru_maxrss kB, wall s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), int(usage.ru_maxrss), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/cryolens_bench_memory")
    ap.add_argument("--keep", action="store_true", help="keep the generated stacks")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--drop-pages", action="store_true",
                    help="also measure with the stack's pages dropped after each read (a possible fix)")
    ap.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=["backproject", "cryoai"], default="backproject")
    ap.add_argument("--epoch-images", type=int, default=2048, help="cryoai: images trained on (one epoch)")
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make:
        make_dataset(Path(a.make[1]), int(a.make[0]), a.box)
        return
    if a.child and a.workload == "cryoai" and not a.read_only:
        child_cryoai(a.child, a.threads, a.epoch_images, a.run_dir)
        return
    if a.child:
        child(a.child, a.threads, not a.read_only, a.drop_pages)
        return

    work = Path(a.workdir)
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    try:
        stars = {}
        for n in sizes:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make", str(n), str(work / f"n{n}"), "--box", str(a.box)],
                           check=True)
            stars[n] = work / f"n{n}" / "particles.star"
            print(f"wrote {n:,} images ({n * a.box ** 2 * 4 / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        floor, floor_ru, _ = measure(["--child", str(stars[max(sizes)]), "--read-only", "--threads", str(a.threads)])
        floor_rss = floor["vm_hwm_kb"]
        print(f"floor (imports + read the {max(sizes):,}-particle STAR): peak RSS {floor_rss / 1024:.0f} MiB "
              f"(ru_maxrss {floor_ru / 1024:.0f})", flush=True)
        for drop in ([False, True] if a.drop_pages else [False]):
            for n in sizes:
                extra = (["--workload", "cryoai", "--epoch-images", str(a.epoch_images),
                          "--run-dir", str(work / f"run{n}")] if a.workload == "cryoai" else [])
                info, ru, wall = measure(["--child", str(stars[n]), "--threads", str(a.threads)] + extra
                                         + (["--drop-pages"] if drop else []))
                rows.append({"n": n, "drop_pages": drop, "peak_rss_mib": info["vm_hwm_kb"] / 1024,
                             "ru_maxrss_mib": ru / 1024, "peak_anon_mib": info["peak_rss_anon_kb"] / 1024,
                             "peak_file_mib": info["peak_rss_file_kb"] / 1024,
                             "read_and_backproject_s": info["wall_s"], "process_wall_s": wall})
                r = rows[-1]
                print(f"N = {n:,}{' (pages dropped)' if drop else ''}: peak RSS {r['peak_rss_mib']:.0f} MiB "
                      f"(ru_maxrss {r['ru_maxrss_mib']:.0f}; anon {r['peak_anon_mib']:.0f}, file-backed "
                      f"{r['peak_file_mib']:.0f}), {a.workload} {info['wall_s']:.0f} s", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"workload {a.workload}; torch threads {a.threads}; floor {floor_rss / 1024:.0f} MiB")
    print("| N | reader | peak RSS (MiB) | peak anonymous (MiB) | peak file-backed (MiB) |"
          f" {'read + back-project' if a.workload == 'backproject' else 'cryoai run'} (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        reader = "+ madvise after each read (patched in the child)" if r["drop_pages"] else "cryolens as is"
        print(f"| {r['n']:,} | {reader} |"
              f" {r['peak_rss_mib']:.0f} | {r['peak_anon_mib']:.0f} | {r['peak_file_mib']:.0f} |"
              f" {r['read_and_backproject_s']:.0f} |")
    growth = {}
    for drop in sorted({r["drop_pages"] for r in rows}):
        sel = [r for r in rows if r["drop_pages"] == drop]
        small, large = sel[0], sel[-1]
        growth[str(drop)] = large["peak_rss_mib"] / small["peak_rss_mib"] - 1
        print(f"RSS growth {small['n']:,} → {large['n']:,}{' (pages dropped)' if drop else ''}: "
              f"{100 * growth[str(drop)]:+.1f}% (goal ≤ {'+20' if a.workload == 'backproject' else '+10'}%)")
    if a.json:
        Path(a.json).write_text(json.dumps({"workload": a.workload, "floor_rss_mib": floor_rss / 1024, "rows": rows,
                                            "growth": growth}, indent=1) + "\n")


if __name__ == "__main__":
    main()

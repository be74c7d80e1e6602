"""glibc malloc settings vs speed and memory (cryolens.memory): each measurement in this process, so run
one per fresh interpreter.

  speed STAR THRESHOLD   one-epoch `cryodrgn-homo` fit (3 × 128, batch 16) and a `backproject` of the
                         particles in STAR (known poses), 1 thread; THRESHOLD > 0 first fixes glibc's
                         M_MMAP_THRESHOLD to that many bytes (0: glibc's dynamic default).
  pose-memory N THRESHOLD
                         cryoAI pose inference (`methods.amortized_pose.infer_poses`, the suite's CPU
                         network, untrained) over N white-noise images (D 64, random CTFs; the stack is
                         written to /tmp once); prints the seconds and VmHWM / VmRSS / RssAnon after.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_malloc.py speed CACHE/particles.star 0
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/diag_malloc.py pose-memory 6000 0
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile
import time

import numpy as np
import torch


def fix_mmap_threshold(threshold: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    assert libc.mallopt(-3, int(threshold)) == 1  # M_MMAP_THRESHOLD


def speed(star: str) -> None:
    from cryolens.io.dataset import read_particles
    from cryolens.io.runfolder import RunFolder
    from cryolens.methods.backprojection import backproject
    from cryolens.methods.registry import Known, get

    torch.set_num_threads(1)
    p = read_particles(star)
    recipe = get("cryodrgn-homo")
    cfg = recipe.config({"epochs": 1, "dec_dim": 128, "batch_size": 16, "amp": False})
    t0 = time.perf_counter()
    recipe.fit(p, Known(poses=True, ctf=True), RunFolder(tempfile.mkdtemp()), cfg, "cpu", False)
    t1 = time.perf_counter()
    backproject(p, progress=False)
    print(f"cryodrgn-homo epoch {t1 - t0:.2f} s, backproject {time.perf_counter() - t1:.2f} s")


def pose_memory(n: int) -> None:
    from cryolens.io.mrc import write_stack
    from cryolens.io.particles import Particles
    from cryolens.methods.amortized_pose import infer_poses
    from cryolens.methods.cryoai import DEFAULTS, CryoAI
    from cryolens.simulate import random_ctf

    path = f"/tmp/diag_malloc_noise_{n}.mrcs"
    if not os.path.exists(path):
        write_stack(path, np.random.default_rng(0).standard_normal((n, 64, 64)).astype(np.float32), 2.0)
    p = Particles(2.0, 64, [path], np.zeros(n, int), np.arange(n), None, None, random_ctf(n))
    model = CryoAI(64, 2.0, {**DEFAULTS, "dec_dim": 128, "enc_channels": 8, "enc_hidden": [128]})
    model.set_norm(1.0)
    t0 = time.perf_counter()
    infer_poses(model, p, "cpu", 256)
    status = {k: v for k, v in (line.split(":", 1) for line in open("/proc/self/status"))}
    mib = {k: int(status[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS", "RssAnon")}
    print(f"N {n}: {time.perf_counter() - t0:.0f} s, " + ", ".join(f"{k} {v} MiB" for k, v in mib.items()))


def main() -> None:
    what, arg, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if threshold > 0:
        fix_mmap_threshold(threshold)
    speed(arg) if what == "speed" else pose_memory(int(arg))


if __name__ == "__main__":
    main()

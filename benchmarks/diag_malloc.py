"""glibc malloc settings vs speed and memory (cryolens.memory): each measurement in this process, so run
one per fresh interpreter.

  speed STAR THRESHOLD   one-epoch `cryodrgn-homo` fit (3 × 128, batch 16) and a `backproject` of the
                         particles in STAR (known poses), 1 thread; THRESHOLD > 0 first fixes glibc's
                         M_MMAP_THRESHOLD to that many bytes (0: glibc's dynamic default).
  pose-memory N THRESHOLD
                         cryoAI pose inference (`inference.amortized.infer_poses`, the suite's CPU
                         network, untrained) over N white-noise images (D 64, random CTFs; the stack is
                         written to /tmp once); prints the seconds and VmHWM / VmRSS / RssAnon after.
  search N BYTES        `hierarchical_search` (D 64, base level 2 + 3 levels, keep 8, shifts ±3 px, CTF)
                        of N simulated 4E43 images (bench_refine's dataset) against its truth map, 1 thread,
                        with `pose_search.REFINE_CPU_BYTES` = BYTES (0: the default; 1e12: one call for
                        all images, as before the bound); prints wall, user and system seconds and minor
                        page faults. THRESHOLD as above.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_malloc.py speed CACHE/particles.star 0
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/diag_malloc.py pose-memory 6000 0
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_malloc.py search 256 0 0        # BYTES 1e12: unbounded
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
    from cryolens.inference.amortized import infer_poses
    from cryolens.methods.cryoai import CryoAI, CryoAIConfig
    from cryolens.simulate import random_ctf

    path = f"/tmp/diag_malloc_noise_{n}.mrcs"
    if not os.path.exists(path):
        write_stack(path, np.random.default_rng(0).standard_normal((n, 64, 64)).astype(np.float32), 2.0)
    p = Particles(2.0, 64, [path], np.zeros(n, int), np.arange(n), None, None, random_ctf(n))
    model = CryoAI(64, 2.0, CryoAIConfig(dec_dim=128, enc_channels=8, enc_hidden=(128,)))
    model.set_norm(1.0)
    t0 = time.perf_counter()
    infer_poses(model, p, "cpu", 256)
    status = {k: v for k, v in (line.split(":", 1) for line in open("/proc/self/status"))}
    mib = {k: int(status[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS", "RssAnon")}
    print(f"N {n}: {time.perf_counter() - t0:.0f} s, " + ", ".join(f"{k} {v} MiB" for k, v in mib.items()))


def search(n: int, budget: float) -> None:
    import resource

    import cryolens.inference.pose_search as ps
    from cryolens.imaging.fft import fft2_centered
    from cryolens.imaging.slice import prepare_volume_ft
    from cryolens.io.dataset import iterate_batches, read_particles

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_refine import _truth, ensure_dataset

    torch.set_num_threads(1)
    if budget > 0:
        ps.REFINE_CPU_BYTES = int(budget)
    ds = ensure_dataset()
    p = read_particles(ds / "particles.star")
    truth, _ = _truth(ds, n)
    vft = prepare_volume_ft(truth, pad=2)
    idx, images = next(iterate_batches(p, n))
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    ps.hierarchical_search(fft2_centered(images), vft, ctf=p.ctf[torch.as_tensor(idx)], pixel_size=p.pixel_size,
                           base_level=2, n_levels=3, max_shift=3.0, shift_step=1.0, keep=8)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"search N {n}, REFINE_CPU_BYTES {ps.REFINE_CPU_BYTES}: wall {time.perf_counter() - t0:.1f} s, "
          f"user {r1.ru_utime - r0.ru_utime:.1f} s, system {r1.ru_stime - r0.ru_stime:.1f} s, "
          f"minor faults {r1.ru_minflt - r0.ru_minflt}")


def main() -> None:
    what, arg, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if threshold > 0:
        fix_mmap_threshold(threshold)
    if what == "speed":
        speed(arg)
    elif what == "search":
        search(int(arg), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    else:
        pose_memory(int(arg))


if __name__ == "__main__":
    main()

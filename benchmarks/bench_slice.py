"""Fourier-slice extraction throughput: cryolens vs torch-fourier-slice 0.6.0, same run, same data.

Two comparisons at D = 64, 128, 256 (oversampling 2 for both):
  extract  — slices from a precomputed 3D transform (cryolens: `extract_from_sampling_volume` on its
             prepared layout, Friedel half; torch-fourier-slice: `extract_central_slices_rfft_3d` on its
             rfft), the operation a reconstruction loop repeats;
  project  — volume → real-space projections, each library's one-call path (transform included).
Prints images/s for each and the ratio cryolens / torch-fourier-slice (higher is better for cryolens).

  .venv/bin/python benchmarks/bench_slice.py [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torch_fourier_slice as tfs

from cryolens.imaging import random_rotations, render_images
from cryolens.imaging.slice import extract_from_sampling_volume, prepare_volume_ft, sampling_volume


def best_time(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="64:512,128:128,256:16", help="D:N pairs")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(f"device {dev}, threads {a.threads}, torch {torch.__version__}")
    print("   D     N | extract ours/s  tfs/s  ratio | project ours/s  tfs/s  ratio")
    for pair in a.sizes.split(","):
        d, n = (int(x) for x in pair.split(":"))
        vol = torch.randn(d, d, d, device=dev)
        rots = random_rotations(n, device=dev)
        sv = sampling_volume(prepare_volume_ft(vol, pad=2))
        padded = F.pad(vol, [d // 2] * 6)
        rfft = torch.fft.fftshift(torch.fft.rfftn(torch.fft.ifftshift(padded), dim=(-3, -2, -1)), dim=(-3, -2))
        t_ours = best_time(lambda: extract_from_sampling_volume(sv, rots, d, hermitian=True))
        t_tfs = best_time(lambda: tfs.extract_central_slices_rfft_3d(rfft, rots))
        p_ours = best_time(lambda: render_images(vol, rots))
        p_tfs = best_time(lambda: tfs.project_3d_to_2d(vol, rots))
        print(f"{d:4d} {n:5d} | {n / t_ours:14.0f} {n / t_tfs:6.0f} {t_tfs / t_ours:6.2f} |"
              f" {n / p_ours:14.0f} {n / p_tfs:6.0f} {p_tfs / p_ours:6.2f}")


if __name__ == "__main__":
    main()

"""The M-step's insertion of weighted (image, rotation, shift) pairs (`inference.mstep.insert_pairs_on_pixels`)
against the per-pair formulation it replaced (issue 27): every pair's shifted, CTF-weighted image copied, then
summed per rotation with `index_add_`. Same inputs, one thread, best of `--repeats`; the per-rotation sums of
both are compared (relative max difference) before timing.

  OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_pair_insertion.py --images 8 --pairs 450

Shape of a fine local pass (0.94° step, D = 64, shells ≤ 32): ~450 kept pairs per image over ~120 rotations
and ~40 shifts (1PWC at SNR 0.1 kept 438–448 pairs per image, `benchmarks/bench_refine_many.py`).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from cryolens.inference.mstep import InsertPixels, insert_pairs_on_pixels
from cryolens.inference.reconstruct import FourierAccumulator


def per_pair_sums(y, c, image, rotation, shift, weight, where: InsertPixels, chunk: int = 4096):
    """The replaced formulation: ``(used rotations, S1 (U, P), S2 (U, P))`` pair by pair."""
    px = where.pixels
    used, inv = torch.unique(rotation, return_inverse=True)
    s1 = torch.zeros(used.shape[0], px.numel(), dtype=y.dtype)
    s2 = torch.zeros(used.shape[0], px.numel(), dtype=y.real.dtype)
    yp, cp = y.flatten(1)[:, px], c.flatten(1)[:, px]
    for s in range(0, image.shape[0], chunk):
        i, wt = image[s:s + chunk], weight[s:s + chunk, None]
        phase = 2 * math.pi * (shift[s:s + chunk] @ where.freqs.T)
        yu = yp[i] * torch.polar(torch.ones_like(phase), phase)
        s1.index_add_(0, inv[s:s + chunk], wt * cp[i] * yu)
        s2.index_add_(0, inv[s:s + chunk], wt * cp[i] * cp[i])
    return used, s1, s2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=450, help="kept pairs per image")
    ap.add_argument("--rotations", type=int, default=120, help="distinct rotations per image")
    ap.add_argument("--shifts", type=int, default=40, help="distinct shifts per image")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    d, b = a.size, a.images
    where = InsertPixels(d, d // 2, "cpu", torch.float32)
    y = torch.randn(b, d, d, dtype=torch.complex64, generator=g)
    c = torch.rand(b, d, d, generator=g)
    image = torch.arange(b).repeat_interleave(a.pairs)
    rotation = torch.randint(0, a.rotations, (b * a.pairs,), generator=g) + image * 10 * a.rotations
    grid = torch.randn(b, a.shifts, 2, generator=g)
    shift = grid[image, torch.randint(0, a.shifts, (b * a.pairs,), generator=g)]
    key = torch.unique(torch.cat([rotation[:, None].double(), shift.double()], 1), dim=0)  # one pair per (R, t)
    rotation, shift = key[:, 0].long(), key[:, 1:].float()
    image = torch.div(rotation, 10 * a.rotations, rounding_mode="floor")
    weight = torch.rand(image.shape[0], generator=g)

    def rot_of(used: torch.Tensor) -> torch.Tensor:  # the same placeholder geometry for both forms
        return torch.eye(3).expand(used.shape[0], 3, 3)

    def ours():
        acc = FourierAccumulator(d, 2, "cpu", torch.float32)
        return insert_pairs_on_pixels(acc, y, c, image, rotation, shift, weight, rot_of, where)

    def before():
        acc = FourierAccumulator(d, 2, "cpu", torch.float32)
        used, s1, s2 = per_pair_sums(y, c, image, rotation, shift, weight, where)
        acc.add_points(s1, s2, rot_of(used), where.freqs, where.mult)
        return used, s1, s2

    _, s1a, s2a = ours()
    _, s1b, s2b = before()
    diff = max(float((s1a - s1b).abs().max() / s1b.abs().max()), float((s2a - s2b).abs().max() / s2b.abs().max()))
    times = {}
    for name, fn in (("per pair (before)", before), ("insert_pairs_on_pixels", ours)):
        best = math.inf
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        times[name] = best
    print(f"{b} images x {image.shape[0] // b} pairs, D {d}: sums agree to {diff:.1e} (relative max)")
    for name, t in times.items():
        print(f"  {name:24s} {t:.3f} s")
    print(f"  ratio (ours / before): {times['insert_pairs_on_pixels'] / times['per pair (before)']:.2f}")


if __name__ == "__main__":
    main()

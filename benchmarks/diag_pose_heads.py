"""Can a pose encoder learn poses over all of SO(3) through the image error alone? One head vs several
winner-take-all heads (``PoseEncoder(heads=M)``, the ``pose_heads`` option of ``cryoai`` / ``cryoposenet``).

The volume is fixed to the truth (a random asymmetric Gaussian-blob map, Fourier voxel grid), the images
are its noiseless slices at rotations uniform over SO(3), so only the encoder learns; the last 100 images
are held out. Each image's pose is its hypothesis with the smallest image error (training and test).
Prints one JSON line per (heads, seed): held-out and training median rotation error (degrees), the
90th percentile, the fraction within 5°, seconds.

    OMP_NUM_THREADS=1 python benchmarks/diag_pose_heads.py --heads 1,8,16 --seeds 0,1,2 --n 2100 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cryolens.imaging import gaussian_volume, geodesic_distance, hartley2, random_rotations
from cryolens.inference.pose_encoder import PoseEncoder
from cryolens.volumes import SliceLattice, VoxelVolume


def blob_map(d: int, n_blobs: int = 20, seed: int = 0) -> torch.Tensor:
    """``(D, D, D)`` float32: ``n_blobs`` Gaussians (σ D/24–D/12) within ±0.28 D of the centre."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n_blobs, 3, generator=g, dtype=torch.float64) - 0.5) * d * 0.55
    sigmas = d / 24 * (1 + torch.rand(n_blobs, generator=g, dtype=torch.float64))
    amps = torch.rand(n_blobs, generator=g, dtype=torch.float64) + 0.5
    return gaussian_volume(centres, sigmas, amps, d).float()


def run(heads: int, seed: int, n: int, steps: int, d: int, lr: float, n_test: int = 100) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rots = random_rotations(n, generator=g)
    lat, field = SliceLattice(d), VoxelVolume(d, blob_map(d)).requires_grad_(False)
    with torch.no_grad():
        target = field(lat.points(rots, half=False))
    scale = target.std()
    images = hartley2(lat.scatter(target)) / d**2  # real-space images of the slices
    enc = PoseEncoder(d, channels=8, hidden=(128,), heads=heads)
    enc.set_scale(float(images.std()))

    def errors(idx):
        hyp = enc.hypotheses(images[idx])[0]
        pred = field(lat.points(hyp.reshape(-1, 3, 3), half=False)).reshape(len(idx), heads, -1)
        return (((pred - target[idx][:, None]) / scale) ** 2).mean(-1), hyp

    def pose_errors(idx):
        with torch.no_grad():
            e, hyp = errors(idx)
            best = hyp[torch.arange(len(idx)), e.argmin(1)]
            return torch.rad2deg(geodesic_distance(best, rots[idx]))

    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = errors(torch.randint(0, n - n_test, (32,), generator=g))[0].min(1).values.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    enc.eval()
    test = pose_errors(torch.arange(n - n_test, n))
    train = pose_errors(torch.arange(min(n - n_test, 500)))
    return {"heads": heads, "seed": seed, "n": n, "steps": steps, "d": d,
            "held_out_median_deg": round(float(test.median()), 2),
            "held_out_p90_deg": round(float(test.quantile(0.9)), 2),
            "held_out_within_5deg": round(float((test < 5).float().mean()), 3),
            "train_median_deg": round(float(train.median()), 2), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="1,8", help="comma-separated numbers of rotation heads")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--n", type=int, default=1100, help="images (the last 100 held out)")
    ap.add_argument("--steps", type=int, default=1500, help="optimiser steps of 32 images")
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    a = ap.parse_args()
    for h in (int(x) for x in a.heads.split(",")):
        for s in (int(x) for x in a.seeds.split(",")):
            print(json.dumps(run(h, s, a.n, a.steps, a.d, a.lr)), flush=True)


if __name__ == "__main__":
    main()

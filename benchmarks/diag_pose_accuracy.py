"""How well can a pose be known at all? The rotation error of the best possible estimate — a local
search around each image's *true* pose with the *true* map, true shift and CTF, and the noise power
measured at the true poses — on the issue-4 refinement dataset of ``bench_refine.py`` (4E43, D 64,
1.5 Å/px, 5,000 images, SNR 0.1, CTF, shifts ≤ 3 px).

A refinement cannot beat this on average: it uses an estimated map and searches globally. So its
median is the floor under the "median rotation error ≤ 2°" goal at this SNR and box.

Search, per image: rotations ``R_true · exp([ω]×)`` on a cube grid of ``ω`` (±6° in 1.5° steps, 9³),
then ±1.5° in 0.375° steps (9³) around the best; score = the Gaussian log-likelihood over all shells
≤ Nyquist (``inference.likelihood.gaussian_log_likelihood``). Reported: the error ``|ω|`` of the best
point (median, mean, 90th percentile), the posterior's RMS angular spread on the fine grid (how sharp
the likelihood is), and how often the best point sits on the coarse grid's edge (the ±6° window too
small).

  .venv/bin/python benchmarks/diag_pose_accuracy.py --n 200 [--map refined.mrc] [--dataset DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_refine import ensure_dataset  # noqa: E402


def axis_angle_cube(half_width_deg: float, step_deg: float, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, 3, 3)`` rotations ``exp([ω]×)`` for ``ω`` on a cube grid (radians) and ``(M, 3)`` the ``ω``."""
    from scipy.spatial.transform import Rotation

    n = int(round(half_width_deg / step_deg))
    a = np.deg2rad(np.arange(-n, n + 1) * step_deg)
    w = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)
    return torch.as_tensor(Rotation.from_rotvec(w).as_matrix(), dtype=dtype), torch.as_tensor(w, dtype=dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images scored (the first N)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--map", help="score against this map (MRC) instead of the true one, e.g. a refinement's "
                                  "final map: how much of the error the map's quality explains")
    ap.add_argument("--dataset", help="a simulated dataset folder (particles.star + ground truth) instead of "
                                      "bench_refine.py's, e.g. bench_abinit.py --select A's monomer")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from cryolens.imaging.fft import fft2_centered
    from cryolens.imaging.shift import phase_shift
    from cryolens.imaging.slice import prepare_volume_ft
    from cryolens.inference.likelihood import ctf_images, gaussian_log_likelihood, volume_slicer
    from cryolens.imaging.grids import shell_index_2d, shell_sum
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import read_volume
    from cryolens.simulate import read_ground_truth

    ds = Path(a.dataset) if a.dataset else ensure_dataset()
    p = read_particles(ds / "particles.star")
    gt = read_ground_truth(ds)
    vol = torch.from_numpy(read_volume(a.map or gt["volume_files"][0])[0].copy()).double()
    d, px = p.box_size, p.pixel_size
    slicer = volume_slicer(prepare_volume_ft(vol, 2), d)
    n = min(a.n, len(p))
    idx_all = torch.arange(n)
    rot_true = p.rotations[:n].double()
    sh_true = p.shifts[:n].double()

    from cryolens.io.dataset import read_images

    def batch_terms(idx):
        imgs = read_images(p, idx.numpy()).double()
        y = phase_shift(fft2_centered(imgs), -sh_true[idx])
        c = ctf_images(p.ctf[idx], len(idx), d, px, "cpu", torch.float64)
        return y, c

    # noise power per shell, from the residuals at the true poses (first 200 images)
    shells = shell_index_2d(d)
    nsh = d // 2 + 1
    num = torch.zeros(nsh, dtype=torch.float64)
    cnt = 0
    for s in range(0, min(200, n), 20):
        idx = idx_all[s:s + 20]
        y, c = batch_terms(idx)
        r = y - c * slicer(rot_true[idx])
        num += shell_sum(r.abs().square().sum(0), shells, nsh)
        cnt += len(idx)
    sigma2 = num / (cnt * shell_sum(torch.ones(d, d, dtype=torch.float64), shells, nsh))

    coarse, w_coarse = axis_angle_cube(6.0, 1.5)
    fine, w_fine = axis_angle_cube(1.5, 0.375)
    err, spread, edge, true_rank_ok = [], [], [], []
    t0 = time.perf_counter()
    for s in range(0, n, a.batch):
        idx = idx_all[s:s + a.batch]
        y, c = batch_terms(idx)
        b = len(idx)
        cand = rot_true[idx][:, None] @ coarse[None]  # (B, M, 3, 3)
        preds = slicer(cand.reshape(-1, 3, 3)).reshape(b, -1, d, d)
        ll = gaussian_log_likelihood(y, preds, sigma2, d // 2, c)  # (B, M)
        best = ll.argmax(1)
        w0 = w_coarse[best]  # (B, 3)
        edge += (w0.abs().max(1).values > math.radians(6.0) - 1e-9).tolist()
        # fine grid around the best coarse point: R_true · exp([w0]×) · exp([v]×)
        from scipy.spatial.transform import Rotation

        r0 = torch.as_tensor(Rotation.from_rotvec(w0.numpy()).as_matrix())
        cand = (rot_true[idx] @ r0)[:, None] @ fine[None]
        preds = slicer(cand.reshape(-1, 3, 3)).reshape(b, -1, d, d)
        ll = gaussian_log_likelihood(y, preds, sigma2, d // 2, c)
        bf = ll.argmax(1)
        rel = r0 @ fine[bf]  # R_true⁻¹ · R_best
        ang = torch.rad2deg(torch.arccos(((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))
        err += ang.tolist()
        post = torch.softmax(ll, 1)
        dev = torch.rad2deg(torch.cdist(w_fine[None].expand(b, -1, -1), w_fine[bf][:, None])[..., 0])  # (B, M) deg
        spread += torch.sqrt((post * dev**2).sum(1)).tolist()
        ll_true = gaussian_log_likelihood(y, slicer(rot_true[idx])[:, None], sigma2, d // 2, c)[:, 0]
        true_rank_ok += (ll.max(1).values >= ll_true - 1e-6).tolist()
        if s % 100 == 0:
            print(f"{s + b}/{n} images, median error so far {np.median(err):.2f}°, {time.perf_counter() - t0:.0f} s",
                  flush=True)
    err_a = np.array(err)
    out = {"dataset": ds.name, "map": a.map or "truth", "n": n, "median_deg": float(np.median(err_a)),
           "mean_deg": float(err_a.mean()),
           "p90_deg": float(np.percentile(err_a, 90)), "fraction_le_2deg": float((err_a <= 2).mean()),
           "posterior_rms_spread_median_deg": float(np.median(spread)), "coarse_edge_fraction": float(np.mean(edge)),
           "best_scores_at_least_the_true_pose": float(np.mean(true_rank_ok)), "wall_s": time.perf_counter() - t0,
           "search": "R_true·exp([ω]×): ±6° step 1.5°, then ±1.5° step 0.375° around the best; true map, shift, CTF"}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

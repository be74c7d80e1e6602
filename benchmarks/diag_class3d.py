"""Class3D diagnostics: per-iteration class accuracy, populations, resolution and pose error of
`relion-class3d`'s EM iteration on the two-conformation set, with the poses searched or given.

Dataset: `bench_abinit.ensure_dataset("hinge")` (bundled 4E43 and 4E43 with chain B turned 30° about the
hinge, 50/50, D = 64, 1.5 Å/px, SNR 0.1, CTF, shifts ≤ 3 px); the first --n images. Start: the mean of
the two true maps low-passed to --lowpass Å, one copy per class, a random first class per image
(seeded), as `methods.class3d.classify`.

  searched (default): `inference.classes.class_em_iteration` exactly as `classify` runs it (SO(3) grid
      level --healpix-order, exhaustive; offsets ≤ 3 px step 1; T = 4; RELION's k_max and working box);
      the median rotation error of each image's MAP pose is reported against the truth.
  --known-poses: the same E/M-steps with each image's true rotation and shift (only the class hidden;
      written out here with the library's slicer, likelihood terms, accumulator and
      `inference.prior.map_prior`): separates the class EM from the pose search.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_class3d.py --n 600 --iterations 8 --healpix-order 1 \
      [--lowpass 60] [--known-poses]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_abinit import ensure_dataset  # noqa: E402


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    a = float(np.mean(labels == truth))
    return max(a, 1.0 - a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--healpix-order", type=int, default=1)
    ap.add_argument("--lowpass", type=float, default=60.0, help="start map low-pass, Å")
    ap.add_argument("--tau2-fudge", type=float, default=4.0)
    ap.add_argument("--minres-map", type=int, default=5)
    ap.add_argument("--known-poses", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from cryolens.imaging.fft import fft2_centered
    from cryolens.imaging.grids import shell_index_2d, shell_sum
    from cryolens.imaging.shift import phase_shift
    from cryolens.imaging.slice import prepare_volume_ft
    from cryolens.imaging.so3_grid import so3_grid
    from cryolens.inference import classes as C
    from cryolens.inference.prior import map_prior
    from cryolens.inference.likelihood import as_slicer, ctf_images
    from cryolens.inference.posterior import translation_grid
    from cryolens.inference.reconstruct import FourierAccumulator
    from cryolens.io.dataset import iterate_batches, read_particles
    from cryolens.io.mrc import read_volume
    from cryolens.inference.classify import initial_volumes, image_power_spectrum
    from cryolens.inference.classify import resolution_shell as _resolution_shell
    from cryolens.methods.class3d import as_config
    from cryolens.metrics.pose_error import pose_error_summary
    from cryolens.simulate import read_ground_truth

    data = ensure_dataset("hinge")
    p = read_particles(data / "particles.star").subset(np.arange(a.n))
    gt = read_ground_truth(data)
    truth = gt["labels"][:a.n].astype(int)
    gv = torch.stack([torch.from_numpy(read_volume(f)[0].copy()) for f in gt["volume_files"]])
    blind = p.subset(np.arange(a.n))
    blind.rotations, blind.shifts = None, None
    d, nsh = p.box_size, p.box_size // 2 + 1
    vols = initial_volumes(blind, gv.mean(0), as_config({"n_classes": 2, "initial_lowpass": a.lowpass}), "cpu",
                           False)
    rng = np.random.default_rng(a.seed)
    prior = torch.zeros(a.n, 2, dtype=torch.float64)
    prior[torch.arange(a.n), torch.as_tensor(rng.integers(0, 2, a.n))] = 1
    s2 = image_power_spectrum(blind, seed=a.seed)
    k_max = min(d // 2, round(d * p.pixel_size / a.lowpass) + 10)
    print(f"N {a.n}, start low-passed to {a.lowpass} Å, "
          f"{'known poses' if a.known_poses else f'poses searched (level {a.healpix_order})'}")
    if a.known_poses:
        shells = shell_index_2d(d)
        rot_true, y_true = p.rotations.double(), torch.cat([fft2_centered(im.double())
                                                            for _, im in iterate_batches(p, 300)])
        y_true = phase_shift(y_true, -p.shifts.double())
        ctf = ctf_images(p.ctf, a.n, d, p.pixel_size, "cpu", torch.float64)
        s2 = s2.double()
    else:
        rot, sh = so3_grid(a.healpix_order), translation_grid(3.0, 1.0, circular=True)
    for it in range(a.iterations):
        t0 = time.time()
        if a.known_poses:
            slices = [as_slicer(prepare_volume_ft(v.double(), 2), d)(rot_true) for v in vols]
            w = 1.0 / (2 * s2[shells.clamp_max(nsh - 1)])
            inside = shells <= k_max
            ll = torch.stack([-((y_true - ctf * sl).abs().square() * w * inside).sum((-1, -2)) for sl in slices], 1)
            post = torch.softmax(ll + torch.log(prior.clamp_min(1e-300)), 1)
            tau2 = torch.stack([C.projector_power_spectrum(prepare_volume_ft(v.double(), 2), d) for v in vols])
            lam, inv = map_prior(s2, tau2, a.tau2_fudge * 8, weak_prior=True, minres_map=a.minres_map)
            plam, pinv = map_prior(s2, tau2, a.tau2_fudge * 8, weak_prior=True)
            new, dvp, resid = [], [], torch.zeros(nsh, dtype=torch.float64)
            for k in range(2):
                acc = FourierAccumulator(d, 2, "cpu", torch.float64)
                acc.add(y_true, rot_true, ctf, scale=post[:, k])
                new.append(acc.reconstruct(lam[k], inv[k]).float())
                dvp.append(torch.where(pinv[k] > 0, acc.shell_weight(2) / pinv[k].clamp_min(1e-300),
                                       acc.shell_weight() / plam[k]))
                resid += shell_sum(((y_true - ctf * slices[k]).abs().square() * post[:, k, None, None]).sum(0),
                                   shells, nsh)
            s2 = resid / (a.n * shell_sum(torch.ones(d, d, dtype=torch.float64), shells, nsh))
            vols, prior = torch.stack(new), post.mean(0)
            labels, res_shell, pose = post.argmax(1).numpy(), _resolution_shell(torch.stack(dvp)), ""
        else:
            r = C.class_em_iteration(blind, vols, s2, rot, sh, prior, tau2_fudge=a.tau2_fudge, k_max=k_max,
                                     work_size=min(d, 2 * (k_max + 4)), batch_size=250, max_significant=200,
                                     minres_map=a.minres_map)
            vols, s2, prior = r.volumes, r.sigma2, r.class_prior
            labels, res_shell = r.labels.cpu().numpy(), _resolution_shell(r.data_vs_prior)
            err = pose_error_summary(rot[r.map_rotation_index.cpu()], p.rotations, align=False)["median_deg"]
            pose = f", median rotation error {err:.1f}°, mean max weight {float(r.max_weight.mean()):.2f}"
        pops = np.round(torch.as_tensor(prior).reshape(-1, 2).mean(0).numpy(), 3).tolist()
        print(f"iteration {it + 1}: k_max {k_max}, accuracy {accuracy(labels, truth):.3f}, populations {pops}, "
              f"resolution {d * p.pixel_size / res_shell:.1f} Å{pose} ({time.time() - t0:.0f} s)", flush=True)
        k_max = int(min(d // 2, res_shell + 10))


if __name__ == "__main__":
    main()

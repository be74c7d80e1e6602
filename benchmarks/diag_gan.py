"""Diagnostics of a ``cryogan`` run of ``bench_gan.py`` (same arguments, plus the flags below): where does the
map stop improving, and why?

- ``--snapshots K``: keep the generator's map every K generator steps (``snaps.pt`` in ``--out``) and, after the
  run, the FSC-0.5 crossing against the true map of single snapshots along the run and of uniform means over
  the last 50 … 1,500 steps and of exponential means (decay 0.99 … 0.999 per step), all in one frame (the
  frame of the mean of the last 250 steps: ``bench_gan.aligned`` then ``bench_gan.refine_frame``).
- ``--true-noise``: the generator's white noise σ is the simulator's own (ground truth), not the estimate
  from the images' background.
- ``--from-truth``: the generator's map starts at the true map (in the data's units) instead of zeros;
  with ``--from-lowpass RES``, at the true map low-passed to RES Å (does the game add the detail beyond RES?).

  nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/diag_gan.py --snapshots 5 \\
      --out /tmp/diag_gan --n 20000 --box 32 --snr 1 --epochs 40 --set blur_decay=0.9 --set epoch_images=2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gan  # noqa: E402

import cryolens.methods.adversarial as gan_wiring  # noqa: E402
import cryolens.methods.cryogan as cryogan  # noqa: E402
from cryolens.inference.adversarial import AdversarialModel  # noqa: E402
from cryolens.io.dataset import read_particles  # noqa: E402
from cryolens.metrics.pose_error import rotate_map  # noqa: E402
from cryolens.simulate.dataset import read_ground_truth  # noqa: E402


def _patch(args, snaps: list[torch.Tensor], truth: torch.Tensor, ds: Path) -> None:
    if args.snapshots:
        update = AdversarialModel.update_average

        def keep(self) -> None:
            update(self)
            self._seen = getattr(self, "_seen", 0) + 1
            if (self._seen - 1) % args.snapshots == 0:
                snaps.append(self.generator.volume.density.detach().clone() * float(self.norm))
        AdversarialModel.update_average = keep
    if args.true_noise:
        sigma = float(read_ground_truth(ds)["noise_sigma"])
        gan_wiring.background_sigma = lambda sample, radius: sigma
    if args.from_truth:
        build = cryogan.build_gan
        if args.from_lowpass:
            from cryolens.imaging.grids import lowpass_volume
            truth = lowpass_volume(truth, args.from_lowpass, bench_gan.PX)

        def from_truth(volume, particles, config, constrain=None):
            model = build(volume, particles, config, constrain)
            with torch.no_grad():
                model.generator.volume.density.copy_(truth / model.norm)
            return model
        cryogan.build_gan = from_truth


def _report(snaps: torch.Tensor, every: int, truth: torch.Tensor, ds: Path) -> None:
    particles = read_particles(ds / "particles.star")
    rot = torch.as_tensor(read_ground_truth(ds)["rotations"], dtype=torch.float32)
    box = truth.shape[-1]
    ref = snaps[-max(1, 250 // every):].mean(0)
    _, median_err, (g, mirrored) = bench_gan.aligned(ref, particles, rot, 300)
    _, g = bench_gan.refine_frame(ref, truth, g, mirrored)

    def res(v: torch.Tensor) -> float:
        return round(bench_gan.res05(rotate_map(v, g, mirrored), truth, box), 2)

    n = len(snaps)
    print("frame: median pose error of the searched subset after alignment", round(median_err, 1), "deg")
    print("single snapshots (step, 0.5 crossing Å):",
          [(every * i, res(snaps[i])) for i in range(0, n, max(1, n // 12))] + [(every * (n - 1), res(snaps[-1]))])
    for steps in (50, 100, 250, 500, 1000, 1500):
        if steps // every <= n:
            print(f"uniform mean of the last {steps} steps:", res(snaps[-(steps // every):].mean(0)))
    for beta in (0.99, 0.995, 0.998, 0.999):
        w = (beta**every) ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
        print(f"exponential mean, {beta} per step:", res(((w / w.sum()).float()[:, None] * snaps.flatten(1)).sum(0)
                                                        .reshape(snaps.shape[1:])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    ap.add_argument("--snapshots", type=int, default=0)
    ap.add_argument("--true-noise", action="store_true")
    ap.add_argument("--from-truth", action="store_true")
    ap.add_argument("--from-lowpass", type=float, default=0.0, help="--from-truth: the truth low-passed to this, Å")
    args, rest = ap.parse_known_args()
    keys = dict(zip(rest[::2], rest[1::2]))
    out, n, box, snr = Path(keys["--out"]), int(keys.get("--n", 2000)), int(keys.get("--box", 32)), \
        float(keys.get("--snr", 1.0))
    out.mkdir(parents=True, exist_ok=True)
    ds, truth = bench_gan.dataset(out, n, box, snr)
    snaps: list[torch.Tensor] = []
    _patch(args, snaps, truth, ds)
    sys.argv = [sys.argv[0], *rest]
    bench_gan.main()
    if snaps:
        torch.save(torch.stack(snaps), out / "snaps.pt")
        _report(torch.stack(snaps).clamp_min(0), args.snapshots, truth, ds)


if __name__ == "__main__":
    main()

"""Does CryoGAN's generator gradient point at the missing detail? A diagnostic of ``cryogan``'s plateau.

The generator's map is set to the true map low-passed to ``--lowpass`` Å (its FSC-0.5 with the truth near
that resolution) and held fixed; the critic alone is trained against it for ``--critic-steps`` steps (the
recipe's critic, Adam, gradient penalty, batch and blur as configured by ``--set``); then the generator's
gradient ``g = ∂(−mean D(fake))/∂V`` is averaged over ``--batches`` fresh fake batches, and the descent
direction ``−g`` is compared with what is missing, ``Δ = truth − V``: their correlation per Fourier shell
(an FSC of the two maps) and, for reference, a single batch's and the likelihood's gradient (Gaussian, white
noise) at the same map over as many real images at their true poses and CTFs — what those images hold. A
gradient that carries the detail correlates positively with ``Δ`` in the shells the low-pass removed; a critic
whose gradient does not (correlation ≈ 0 there) cannot lead the map beyond the low-pass however long it trains.

``--true-noise``: the fakes' white noise has the simulator's σ instead of the recipe's background estimate.
Data as ``bench_gan.py`` makes them (4E43 or ``--model``, D ``--box``, 3 Å/px, ``--n`` images at ``--snr``).

  nice -n 5 env OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/diag_gan_gradient.py \\
      --out /tmp/bench_gan --n 20000 --box 32 --snr 100 --lowpass 12 --critic-steps 400 --batches 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gan  # noqa: E402

from cryolens.imaging.grids import lowpass_volume  # noqa: E402
from cryolens.io.dataset import iterate_batches, read_particles  # noqa: E402
from cryolens.methods import get  # noqa: E402
from cryolens.methods.adversarial import build_gan  # noqa: E402
from cryolens.metrics.fsc import fsc  # noqa: E402
from cryolens.simulate.dataset import read_ground_truth  # noqa: E402
from cryolens.volumes.voxel import RealVoxelVolume  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--snr", type=float, default=1.0)
    ap.add_argument("--model", default="4E43")
    ap.add_argument("--lowpass", type=float, default=12.0, help="the generator's map: the truth low-passed to this, Å")
    ap.add_argument("--critic-steps", type=int, default=400)
    ap.add_argument("--batches", type=int, default=200, help="fake batches the generator's gradient is averaged over")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE option of cryogan (repeatable)")
    ap.add_argument("--true-noise", action="store_true", help="the fakes' noise σ is the simulator's, not the "
                    "background estimate")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds, truth = bench_gan.dataset(a.out, a.n, a.box, a.snr, a.model)
    particles = read_particles(ds / "particles.star")
    config = get("cryogan").config({"blur_sigma": 0.0, **dict(kv.split("=", 1) for kv in a.set)})
    torch.manual_seed(config.seed)
    model = build_gan(RealVoxelVolume(particles.box_size), particles, config)
    sigma = model.generator.noise_sigma
    if a.true_noise:
        model.generator.noise_sigma = float(read_ground_truth(ds)["noise_sigma"]) / float(model.norm)
    start = lowpass_volume(truth, a.lowpass, bench_gan.PX).clamp_min(0)
    with torch.no_grad():
        model.generator.volume.density.copy_(start / model.norm)
    per = config.batch_size * config.n_critic
    steps, wass = 0, []
    while steps < a.critic_steps:
        order = np.random.default_rng(steps).permutation(len(particles))
        for idx, images in iterate_batches(particles, per, order):
            it = torch.as_tensor(idx)
            out = model.before_step({"image": images, "ctf": particles.ctf[it]}, None)
            wass.append(float(out["wasserstein"]))
            steps += config.n_critic
            if steps >= a.critic_steps:
                break
    volume = model.generator.volume.density
    total = torch.zeros_like(volume)
    single = None
    for _ in range(a.batches):
        volume.grad = None
        model({"index": None})["loss"].backward()
        total += volume.grad
        single = volume.grad.clone() if single is None else single
    # the reference: the likelihood's gradient at the same map for as many real images with their true poses
    gt_rot = torch.as_tensor(read_ground_truth(ds)["rotations"], dtype=torch.float32)
    pick = np.sort(np.random.default_rng(1).permutation(len(particles))[:a.batches * config.batch_size])
    volume.grad = None
    for idx, images in iterate_batches(particles, 200, pick):
        it = torch.as_tensor(idx)
        clean = model.generator.clean({"rotation": gt_rot[it], "shift": torch.zeros(len(it), 2),
                                       "ctf": particles.ctf[it], "z": None})
        (0.5 * (images / model.norm - clean).square().sum()).backward()
    likelihood = volume.grad.clone()
    missing = (truth - start) / model.norm
    shells = np.arange(a.box // 2 + 1)
    cut = a.box * bench_gan.PX / a.lowpass
    print(f"critic: {steps} steps, Wasserstein estimate first/last 20: {np.mean(wass[:20]):.3f} / "
          f"{np.mean(wass[-20:]):.3f}; start map FSC-0.5 vs truth {bench_gan.res05(start, truth, a.box):.2f} Å; "
          f"low-pass shell {cut:.1f}; noise σ {model.generator.noise_sigma:.4f} (background estimate {sigma:.4f})")
    for name, grad in ((f"mean of {a.batches} batches", total), ("one batch", single),
                       (f"likelihood, {len(pick)} real images at their true poses", likelihood)):
        corr = fsc(-grad, missing)
        print(f"corr(−g, truth − V) per shell, {name}:", " ".join(f"{c:.2f}" for c in corr))
        above = corr[shells > cut]
        print(f"  mean over the shells beyond the low-pass: {above.mean():.3f}; "
              f"below: {corr[(shells > 0) & (shells <= cut)].mean():.3f}")


if __name__ == "__main__":
    main()

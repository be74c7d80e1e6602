"""AtomVAE's pose-only warm-up on a simulated set, the median rotation error of the encoder's poses after every
epoch (plain, modulo the model's pseudo two-fold, aligned): the recipe's model
(:func:`cryolens.methods.atomvae.build`, ``--set`` options as ``cryolens train``'s) trained through its warm-up
loss alone against the fixed base model (``model``: default the state-0 ground-truth model), Adam, shuffled
batches; the error of the first ``--n-eval`` images (the base model's frame is the data's, so the plain error
needs no alignment).

  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/diag_atomvae_poses.py DATA --epochs 10 \\
      --set per=residue --set warmup_resolution=12
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from cryolens.bench.scoring import symmetry_operators
from cryolens.imaging.rotations import geodesic_distance
from cryolens.inference.atomvae import encoder_poses
from cryolens.inference.engine import ParticleBatches, to_device
from cryolens.io.dataset import read_particles
from cryolens.methods.atomvae import build
from cryolens.methods.registry import get
from cryolens.metrics.pose_error import pose_error_summary


def errors(model, blind, truth: torch.Tensor, n_eval: int, ops: list[torch.Tensor]) -> dict:
    """Median errors (degrees) of the encoder's poses of the first ``n_eval`` images: plain, to the nearest pose
    under the model's pseudo-symmetry ``ops`` (:func:`cryolens.bench.scoring.symmetry_operators`), aligned."""
    sub = blind.subset(np.arange(min(n_eval, len(blind))))
    rot, _ = encoder_poses(model, sub, "cpu")
    true = truth[:len(sub)].double()
    each = np.stack([np.rad2deg(geodesic_distance(rot.double(), op @ true).numpy()) for op in ops])
    return {"plain_median_deg": float(np.median(each[0])), "within_10deg": float((each[0] < 10).mean()),
            "sym_median_deg": float(np.median(each.min(0))), "sym_within_10deg": float((each.min(0) < 10).mean()),
            "aligned_median_deg": pose_error_summary(rot, truth[:len(sub)])["median_deg"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n-eval", type=int, default=400)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE")
    args = ap.parse_args()
    particles = read_particles(args.data / "particles.star")
    options = {"model": str(args.data / "ground_truth" / "model_000.pdb"), "batch_size": 32, "lr": 5e-4,
               **dict(kv.split("=", 1) for kv in args.set)}
    config = get("atomvae").config(options)
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = build(blind, config, "cpu")
    model.joint = False
    ops = symmetry_operators(options["model"])
    params = [p for p in model.pose_encoder.parameters()] + [model.log_scale]
    opt = torch.optim.Adam(params, lr=float(config.lr))
    data, g = ParticleBatches(blind), torch.Generator().manual_seed(int(config.seed))
    print(json.dumps({"options": options, "epoch": 0, **errors(model, blind, particles.rotations, args.n_eval, ops)}))
    for epoch in range(1, args.epochs + 1):
        t0, losses = time.perf_counter(), []
        order = torch.randperm(len(blind), generator=g)
        for s in range(0, len(order), int(config.batch_size)):
            loss = model(to_device(data[order[s:s + int(config.batch_size)].tolist()], "cpu"))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        print(json.dumps({"epoch": epoch, "loss": float(np.mean(losses)), "epoch_s": time.perf_counter() - t0,
                          **errors(model, blind, particles.rotations, args.n_eval, ops)}), flush=True)


if __name__ == "__main__":
    main()

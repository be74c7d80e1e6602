"""Reconstruct a map from particles with known poses and CTFs (Fourier insertion, Wiener/MAP filter).

Writes half1.mrc, half2.mrc, map.mrc, metrics.json (half-map FSC and resolution; FSC against
--reference when given), fsc.png, sections.png, particles.png and report.html into --out.

  cryolens backproject particles.star --out run/
  cryolens backproject particles.cs --out run/ --reference ground_truth/volume_000.mrc
  cryolens backproject particles.mrcs --poses poses.pkl --ctf ctf.pkl --out run/
"""

from __future__ import annotations

import argparse

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="particles: RELION .star, cryoSPARC .cs, or an .mrcs stack with --poses/--ctf")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--poses", help="cryoDRGN pose pickle (with an .mrcs input)")
    p.add_argument("--ctf", help="cryoDRGN CTF pickle (with an .mrcs input)")
    p.add_argument("--reference", help="ground-truth map (.mrc) to compute the FSC against")
    p.add_argument("--pad", type=int, default=2, help="Fourier oversampling factor (default 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the half-set split when the input has none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report
    from ..io.dataset import read_particles
    from ..io.mrc import read_volume
    from ..io.runfolder import RunFolder
    from ..methods.backprojection import backproject, write_outputs
    from .common import pick_device, require_reference

    device = pick_device(args.device)
    particles = read_particles(args.input, poses=args.poses, ctf=args.ctf)
    reference = None
    if args.reference:
        ref, _ = read_volume(args.reference)
        reference = require_reference(torch.from_numpy(ref), particles.box_size, args.reference)
    run = RunFolder(args.out)
    run.write_config("backproject", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    result = backproject(particles, pad=args.pad, batch_size=args.batch_size, device=device, seed=args.seed,
                         progress=not args.quiet)
    metrics = write_outputs(result, particles, run, reference)
    write_report(run.root, f"cryolens backproject — {args.input}")
    print(f"half-map resolution (FSC 0.143): {metrics['resolution_halfmap_0143_A']:.2f} Å")
    if "resolution_vs_ground_truth_05_A" in metrics:
        print(f"resolution against the reference (FSC 0.5): {metrics['resolution_vs_ground_truth_05_A']:.2f} Å")
    print(f"wrote {run.root}/map.mrc, half maps, metrics.json and report.html")
    return 0

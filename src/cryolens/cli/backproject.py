"""Reconstruct a map from particles with known poses and CTFs (Fourier insertion, Wiener/MAP filter).

Writes half1.mrc, half2.mrc, map.mrc, particles.star (rlnRandomSubset: the half of each image),
metrics.json (half-map FSC and resolution; FSC against --reference when given), fsc.png,
sections.png, particles.png and report.html into --out. Options of the backprojection recipe
(``cryolens recipes backprojection``) have their own flags and --set KEY=VALUE.

  cryolens backproject particles.star --out run/
  cryolens backproject particles.cs --out run/ --reference ground_truth/volume_000.mrc
  cryolens backproject particles.mrcs --poses poses.pkl --ctf ctf.pkl --out run/ --pad 1
"""

from __future__ import annotations

import argparse


RECIPE = "backprojection"


def add_args(p: argparse.ArgumentParser) -> None:
    from ..methods.registry import get
    from .options import add_recipe_options, add_run_flags

    p.add_argument("input", help="particles: RELION .star, cryoSPARC .cs, or an .mrcs stack with --poses/--ctf")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--poses", help="cryoDRGN pose pickle (with an .mrcs input)")
    p.add_argument("--ctf", help="cryoDRGN CTF pickle (with an .mrcs input)")
    p.add_argument("--reference", help="ground-truth map (.mrc) to compute the FSC against")
    add_run_flags(p)
    add_recipe_options(p, get(RECIPE))


def main(args: argparse.Namespace) -> int:
    import torch

    from ..io.dataset import read_particles
    from ..io.mrc import read_volume
    from ..methods.registry import Known, get
    from .common import fit_and_write, pick_device, require_reference
    from .options import recipe_config

    recipe = get(RECIPE)
    config = recipe_config(recipe, args)
    device = pick_device(args.device)
    particles = read_particles(args.input, poses=args.poses, ctf=args.ctf)
    if particles.rotations is None:
        from ..errors import InputError

        raise InputError(f"{particles.source or args.input}: no poses (e.g. rlnAngleRot/Tilt/Psi); "
                         "back-projection needs known poses")
    reference = None
    if args.reference:
        ref, _ = read_volume(args.reference)
        reference = require_reference(torch.from_numpy(ref), particles.box_size, args.reference)
    known = Known(poses=True, ctf=particles.ctf is not None)
    _, metrics = fit_and_write("backproject", recipe, particles, known, config, args, device, reference)
    if metrics is None:  # not rank 0 of a multi-process run: rank 0 reports
        return 0
    print(f"half-map resolution (FSC 0.143): {metrics['resolution_halfmap_0143_A']:.2f} Å")
    if "resolution_vs_ground_truth_05_A" in metrics:
        print(f"resolution against the reference (FSC 0.5): {metrics['resolution_vs_ground_truth_05_A']:.2f} Å")
    print(f"wrote {args.out}/map.mrc, half maps, metrics.json and report.html")
    return 0

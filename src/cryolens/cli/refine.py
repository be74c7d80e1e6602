"""Refine a map and the particle poses from an initial map (gold-standard auto-refinement, CTF known).

Recipes: relion-refine3d (full pose posterior, RELION's auto-refine; default) or cryosparc-refine
(modal poses by hierarchical search). Writes per iteration iterNNN_half{1,2}.mrc, iterNNN_fsc.json
and iterNNN_particles.star, a checkpoint (checkpoint.pt: --resume continues a killed run), and at
the end map.mrc, half1.mrc, half2.mrc, particles.star (poses, rlnRandomSubset; RELION reads it),
metrics.json, fsc.png, fsc_iterations.png, resolution_history.png, angular_distribution.png,
sections.png and report.html into --out.

  cryolens refine particles.star --init-map start.mrc --out run/
  cryolens refine particles.star --init-map start.mrc --out run/ --lowpass 20 --reference gt.mrc
  cryolens refine particles.star --init-map start.mrc --out run/ --recipe cryosparc-refine
  cryolens refine particles.star --init-map start.mrc --out run/ --resume
"""

from __future__ import annotations

import argparse
import json

import torch

RECIPES = ("relion-refine3d", "cryosparc-refine")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="particles with CTF: RELION .star or cryoSPARC .cs (poses, if any, are ignored)")
    p.add_argument("--init-map", help="initial map (.mrc, same box); without it the recipe says what it starts from")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--recipe", choices=RECIPES, default="relion-refine3d")
    p.add_argument("--lowpass", type=float, help="initial low-pass in Å (recipe default: 60 RELION, 30 cryoSPARC)")
    p.add_argument("--max-iterations", type=int, help="cap on iterations (default 30)")
    p.add_argument("--relax-sym", metavar="Cn", help="pseudo-symmetry (C2, C3, ...): local searches also visit "
                   "each pose's symmetry mates; the axis is found on the initial map (RELION 4's --relax_sym)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe option, e.g. --set healpix_order=3 --set max_order=4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--reference", help="ground-truth map (.mrc) to compute the FSC against")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the half-set split when the input has none")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report
    from ..errors import InputError
    from ..io.dataset import read_particles
    from ..io.files import require_file
    from ..io.mrc import read_volume
    from ..io.runfolder import RunFolder
    from ..methods.refine3d import refine, write_outputs
    from ..methods.registry import get
    from .common import pick_device, require_reference

    device = pick_device(args.device)
    particles = read_particles(args.input)
    recipe = get(args.recipe)
    overrides = {"seed": args.seed, "resume": args.resume}
    if args.init_map:
        overrides["init_map"] = str(require_file(args.init_map, "initial map"))
    if args.lowpass is not None:
        overrides["lowpass"] = args.lowpass
    if args.max_iterations is not None:
        overrides["max_iterations"] = args.max_iterations
    if args.relax_sym:
        overrides["relax_symmetry"] = args.relax_sym
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in recipe.defaults:
            raise InputError(f"--set {item}: expected KEY=VALUE with KEY one of {', '.join(sorted(recipe.defaults))}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    config = recipe.config(overrides)
    reference = None
    if args.reference:
        ref, _ = read_volume(args.reference)
        reference = require_reference(torch.from_numpy(ref), particles.box_size, args.reference)
    run = RunFolder(args.out)
    if args.resume and not run.path("checkpoint.pt").is_file():
        raise InputError(f"{run.path('checkpoint.pt')}: no checkpoint to resume from")
    if not args.resume:
        run.write_config("refine", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    result, note = refine(particles, config, run, device, progress=not args.quiet)
    metrics = write_outputs(result, particles, run, reference,
                            {"recipe": args.recipe, "initial_map": note, "initial_lowpass_A": config["lowpass"]})
    write_report(run.root, f"cryolens refine ({args.recipe}) — {args.input}")
    print(f"initial map: {note}")
    print(f"{len(result.history)} iterations ({'converged' if result.converged else 'iteration cap reached'}); "
          f"half-map resolution (FSC 0.143): {metrics['resolution_halfmap_0143_A']:.2f} Å")
    if "resolution_vs_ground_truth_05_A" in metrics:
        print(f"resolution against the reference (FSC 0.5): {metrics['resolution_vs_ground_truth_05_A']:.2f} Å")
    print(f"wrote {run.root}/map.mrc, particles.star, metrics.json and report.html")
    return 0

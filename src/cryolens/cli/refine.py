"""Refine a map and the particle poses from an initial map (gold-standard auto-refinement, CTF known).

Recipes: relion-refine3d (full pose posterior, RELION's auto-refine; default) or cryosparc-refine
(modal poses by hierarchical search). Writes per iteration iterNNN_half{1,2}.mrc, iterNNN_fsc.json
and iterNNN_particles.star, a checkpoint (checkpoint.pt: --resume continues a killed run), and at
the end map.mrc, half1.mrc, half2.mrc, particles.star (poses, rlnRandomSubset; RELION reads it),
metrics.json, fsc.png, fsc_iterations.png, resolution_history.png, angular_distribution.png,
sections.png and report.html into --out. Every option of the recipe has a flag (``cryolens recipes
relion-refine3d``) and can be set with --set KEY=VALUE.

  cryolens refine particles.star --init-map start.mrc --out run/
  cryolens refine particles.star --init-map start.mrc --out run/ --lowpass 20 --reference gt.mrc
  cryolens refine particles.star --init-map start.mrc --out run/ --recipe cryosparc-refine
  cryolens refine particles.star --init-map start.mrc --out run/ --resume
"""

from __future__ import annotations

import argparse


RECIPES = ("relion-refine3d", "cryosparc-refine")
ALIASES = {"relax_symmetry": ["--relax-sym"]}


def add_args(p: argparse.ArgumentParser) -> None:
    from ..methods.registry import get
    from .options import add_recipe_options, add_run_flags

    p.add_argument("input", help="particles with CTF: RELION .star or cryoSPARC .cs (poses, if any, are ignored)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--recipe", choices=RECIPES, default="relion-refine3d")
    p.add_argument("--reference", help="ground-truth map (.mrc) to compute the FSC against")
    add_run_flags(p)
    add_recipe_options(p, [get(r) for r in RECIPES], ALIASES)


def main(args: argparse.Namespace) -> int:
    import torch

    from ..errors import InputError
    from ..io.dataset import read_particles
    from ..io.files import require_file
    from ..io.mrc import read_volume
    from ..io.runfolder import RunFolder
    from ..methods.registry import Known, get
    from .common import config_value, fit_and_write, pick_device, require_reference
    from .options import recipe_config

    recipe = get(args.recipe)
    config = recipe_config(recipe, args)
    if config_value(config, "init_map"):
        require_file(config_value(config, "init_map"), "initial map")
    device = pick_device(args.device)
    particles = read_particles(args.input)
    reference = None
    if args.reference:
        ref, _ = read_volume(args.reference)
        reference = require_reference(torch.from_numpy(ref), particles.box_size, args.reference)
    if config_value(config, "resume") and not RunFolder(args.out).path("checkpoint.pt").is_file():
        raise InputError(f"{RunFolder(args.out).path('checkpoint.pt')}: no checkpoint to resume from")
    out, metrics = fit_and_write("refine", recipe, particles, Known(poses=False, ctf=True), config, args, device,
                                 reference, {"initial_lowpass_A": config_value(config, "lowpass")})
    if metrics is None:  # not rank 0 of a multi-process run: rank 0 reports
        return 0
    print(f"initial map: {metrics.get('initial_map')}")
    state = "converged" if metrics.get("converged") else "iteration cap reached"
    print(f"{metrics.get('iterations')} iterations ({state}); "
          f"half-map resolution (FSC 0.143): {metrics['resolution_halfmap_0143_A']:.2f} Å")
    if "resolution_vs_ground_truth_05_A" in metrics:
        print(f"resolution against the reference (FSC 0.5): {metrics['resolution_vs_ground_truth_05_A']:.2f} Å")
    print(f"wrote {args.out}/map.mrc, particles.star, metrics.json and report.html")
    return 0

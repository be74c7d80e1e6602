"""Ab initio reconstruction from random starts (cryoSPARC-style), then refinement.

K = 1: ab initio map, then gold-standard auto-refinement (map.mrc, half1/2.mrc, fsc.png). K > 1
(--classes): multi-class ab initio, then 3D classification from the K maps (class_*.mrc). Always:
abinit_class_*.mrc, particles.star (final poses; rlnClassNumber, 1-based, when K > 1), metrics.json,
per-iteration plots, checkpoints and report.html in --out. --init-map gives a warm start instead of
random noise; --no-refine stops after the ab initio stage. Every option of cryosparc-abinit has a
flag (``cryolens recipes cryosparc-abinit``) and --set KEY=VALUE.

  cryolens abinit particles.star --out run/ --seed 1
  cryolens abinit particles.star --out run/ --classes 2
  cryolens abinit particles.star --out run/ --init-map start.mrc --iterations 100
  cryolens abinit particles.star --out run/ --resume      # continue a killed run
"""

from __future__ import annotations

import argparse

RECIPES = ("cryosparc-abinit", "cryosparc-abinit-hetero")
ALIASES = {"n_classes": ["--classes"], "n_iterations": ["--iterations"],
           "refine_relax_symmetry": ["--relax-sym"], "relax_symmetry": ["--relax-sym"]}


def add_args(p: argparse.ArgumentParser) -> None:
    from ..methods.registry import get
    from .options import add_recipe_options, add_run_flags

    p.add_argument("input", help="particles: RELION .star or cryoSPARC .cs (CTF needed; poses are searched)")
    p.add_argument("--out", required=True, help="run folder to write")
    add_run_flags(p)
    add_recipe_options(p, [get(r) for r in RECIPES], ALIASES)


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io.dataset import read_particles
    from ..methods.config import coerce
    from ..methods.registry import Known, get
    from .common import config_value, fit_and_write, pick_device
    from .options import recipe_overrides

    over = recipe_overrides(args)
    k = coerce(over.get("n_classes", 1), int, f"recipe {RECIPES[0]}: option n_classes")
    if k < 1:
        raise InputError(f"--classes {k}: need at least 1")
    recipe = get(RECIPES[0] if k == 1 else RECIPES[1])
    config = recipe.config({"n_classes": k, **over})
    if config_value(config, "init_map"):
        from ..io.files import require_file

        require_file(config_value(config, "init_map"), "initial map")
    device = pick_device(args.device)
    particles = read_particles(args.input)
    out, metrics = fit_and_write("abinit", recipe, particles, Known(poses=False, ctf=True), config, args, device)
    if metrics is None:  # not rank 0 of a multi-process run: rank 0 reports
        return 0
    if "resolution_halfmap_0143_A" in metrics:
        print(f"refined half-map resolution (FSC 0.143): {metrics['resolution_halfmap_0143_A']:.2f} Å")
    if "class_prior" in metrics:
        print("classes: " + ", ".join(f"{100 * p:.1f} %" for p in metrics["class_prior"]))
    print(f"wrote {args.out}: maps, particles.star, metrics.json and report.html")
    return 0

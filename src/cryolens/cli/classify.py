"""3D classification into K classes, RELION Class3D-style (poses searched, CTF known).

Writes class_001.mrc … class_K.mrc, particles.star (poses and rlnClassNumber, 1-based; RELION reads
it), metrics.json, class_populations.png, resolution.png, log_likelihood.png, class_sections.png,
checkpoint.pt and report.html into --out. Without --init-map a homogeneous ab initio map is made first.
Every option of relion-class3d has a flag (``cryolens recipes relion-class3d``) and --set KEY=VALUE.

  cryolens classify particles.star --classes 2 --out run/ --init-map start.mrc
  cryolens classify particles.star --classes 3 --out run/ --healpix-order 2 --iterations 15
  cryolens classify particles.star --classes 2 --out run/ --resume      # continue a killed run
  cryolens classify refined/particles.star --classes 2 --out run/ --init-map refined/map.mrc --skip-align
                                        # keep the consensus refinement's poses (RELION's --skip_align)
"""

from __future__ import annotations

import argparse

RECIPE = "relion-class3d"
ALIASES = {"n_classes": ["--classes"], "n_iterations": ["--iterations"]}


def add_args(p: argparse.ArgumentParser) -> None:
    from ..methods.registry import get
    from .options import add_recipe_options, add_run_flags

    p.add_argument("input", help="particles: RELION .star or cryoSPARC .cs (CTF needed; poses are searched, "
                                 "or kept with --skip-align)")
    p.add_argument("--out", required=True, help="run folder to write")
    add_run_flags(p)
    add_recipe_options(p, get(RECIPE), ALIASES, required=["n_classes"])


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io.dataset import read_particles
    from ..methods.registry import Known, get
    from .common import config_value, fit_and_write, pick_device
    from .options import recipe_config

    recipe = get(RECIPE)
    config = recipe_config(recipe, args)
    k = config_value(config, "n_classes")
    if k < 1:
        raise InputError(f"--classes {k}: need at least 1")
    device = pick_device(args.device)
    particles = read_particles(args.input)
    known = Known(poses=bool(config_value(config, "skip_align")), ctf=True)
    out, metrics = fit_and_write("classify", recipe, particles, known, config, args, device)
    if metrics is None:  # not rank 0 of a multi-process run: rank 0 reports
        return 0
    pops = ", ".join(f"{100 * p:.1f} %" for p in metrics["class_prior"])
    print(f"classes: {pops}; resolution (data vs prior = 1): {metrics['resolution_A']:.2f} Å")
    print(f"wrote {args.out}/class_*.mrc, particles.star, metrics.json and report.html")
    return 0

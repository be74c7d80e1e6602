"""Train a learned method (a recipe of the registry, ``cryolens recipes``) on particles; writes a run folder.

``cryolens train RECIPE --help`` lists the recipe's options: each has its own flag (``--option-name``)
and can also be set with --set KEY=VALUE (values parsed as JSON, else kept as text). The run folder
gets config.json, model.json, checkpoint.pt (every epoch; --resume continues from it), log.jsonl
(every loss term per step), z.npy (latents, one row per particle in input order), map.mrc,
particles.star, training_curves.png, sections.png, metrics.json and report.html. Multi-process (DDP;
gloo on CPU, NCCL on GPUs; --batch-size is the global batch):
torchrun --nproc_per_node=K --no-python cryolens train ...

  cryolens train cryodrgn particles.star --out run/ --zdim 8 --epochs 20
  cryolens train cryodrgn-homo particles.star --out run/ --dec-dim 256
  cryolens train cryodrgn-autodecoder particles.star --out run/ --variational
  cryolens train cryodrgn run_data/particles.star --out run/ --resume
  cryolens train cryoai particles.star --out run/ --no-symmetrized-loss --refine-poses
  cryolens train cryoai big.star --out run/ --epoch-images 20000   # an "epoch" = 20,000 random images
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    from ..methods.registry import recipes
    from .options import add_recipe_options, add_run_flags

    sub = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True,
                           help="a learned recipe (list them all with: cryolens recipes)")
    for name, rec in sorted(recipes().items()):
        if not rec.learned:
            continue
        q = sub.add_parser(name, help=rec.summary, description=f"{name}: {rec.summary}. Paper: {rec.reference}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("input", help="particles: RELION .star, cryoSPARC .cs, or an .mrcs stack with --poses/--ctf")
        q.add_argument("--out", required=True, help="run folder to write")
        q.add_argument("--poses", help="cryoDRGN pose pickle (with an .mrcs input)")
        q.add_argument("--ctf", help="cryoDRGN CTF pickle (with an .mrcs input)")
        add_run_flags(q)
        add_recipe_options(q, rec)


def main(args: argparse.Namespace) -> int:
    from ..analysis.writer import title_for, write_run
    from ..errors import InputError
    from ..inference.distributed import finish_distributed, init_distributed, is_main
    from ..io.dataset import read_particles
    from ..io.runfolder import RunFolder
    from ..methods import Known, get
    from .common import config_dict, config_value, pick_device
    from .options import recipe_config

    recipe = get(args.recipe)
    config = recipe_config(recipe, args)  # option errors first, before any file is read
    particles = read_particles(args.input, poses=args.poses, ctf=args.ctf)
    known = Known(poses=particles.rotations is not None, ctf=particles.ctf is not None)
    if not recipe.accepts(known):
        need = ", ".join(sorted(recipe.needs))
        raise InputError(f"{args.input}: recipe {recipe.name} needs {need} in the particle metadata")
    device = init_distributed(pick_device(args.device)) or pick_device(args.device)
    run = RunFolder(args.out)
    if is_main():
        if not config_value(config, "resume"):
            run.path("metrics.json").unlink(missing_ok=True)
        run.write_config("train", {"recipe": recipe.name, "input": args.input, "poses": args.poses,
                                   "ctf": args.ctf, "device": str(device), **config_dict(config)})
    try:
        out = recipe.fit(particles, known, run, config, device, not args.quiet)
    finally:
        finish_distributed()
    if not is_main():
        return 0
    write_run(out, particles, run, recipe, keep_existing=True, title=title_for("train", recipe, args.input),
              report=not args.no_report, plots=not args.no_report)
    print(f"trained {recipe.name} on {len(particles)} images; wrote {run.root}/ (map.mrc"
          + (", z.npy" if out.latents is not None else "") + ", checkpoint.pt, log.jsonl, report.html)")
    return 0

"""Train a learned method (a recipe of the registry) on particles; writes a run folder.

Every recipe option can be set with --set KEY=VALUE (values parsed as JSON, else kept as text); the
common ones have their own flags. The run folder gets config.json, model.json, checkpoint.pt
(every epoch; --resume continues from it), log.jsonl (every loss term per step), z.npy (latents, one
row per particle in input order), map.mrc, training_curves.png, sections.png, metrics.json and
report.html. Multi-process (DDP; gloo on CPU, NCCL on GPUs; --batch-size is the global batch):
torchrun --nproc_per_node=K --no-python cryolens train ...

  cryolens train cryodrgn particles.star --out run/ --zdim 8 --epochs 20
  cryolens train cryodrgn-homo particles.star --out run/ --set dec_dim=256
  cryolens train cryodrgn-autodecoder particles.star --out run/ --set variational=true
  cryolens train cryodrgn run_data/particles.star --out run/ --resume
  cryolens train cryoai particles.star --out run/ --set symmetrized_loss=false --set refine_poses=true
  cryolens train cryoai big.star --out run/ --set epoch_images=20000   # an "epoch" = 20,000 random images
"""

from __future__ import annotations

import argparse
import json

_FLAGS = {"epochs": "epochs", "zdim": "zdim", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
          "num_workers": "num_workers"}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe name (cryolens info --recipes, or cryodrgn, cryodrgn-homo, cryoai, ...)")
    p.add_argument("input", help="particles: RELION .star, cryoSPARC .cs, or an .mrcs stack with --poses/--ctf")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--poses", help="cryoDRGN pose pickle (with an .mrcs input)")
    p.add_argument("--ctf", help="cryoDRGN CTF pickle (with an .mrcs input)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--zdim", type=int, help="latent dimension")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe option")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_overrides(args: argparse.Namespace) -> dict:
    """The recipe overrides of the flags and of ``--set KEY=VALUE`` (JSON values, else text)."""
    from ..errors import InputError

    out = {key: getattr(args, attr) for attr, key in _FLAGS.items() if getattr(args, attr, None) is not None}
    for item in args.set:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    if args.resume:
        out["resume"] = True
    return out


def main(args: argparse.Namespace) -> int:
    from ..analysis.plots import plot_sections
    from ..analysis.report import write_report
    from ..errors import InputError
    from ..inference.distributed import finish_distributed, init_distributed, is_main
    from ..io.dataset import read_particles
    from ..io.runfolder import RunFolder
    from ..methods import Known, get
    from .common import pick_device

    try:
        recipe = get(args.recipe)
    except KeyError as e:
        raise InputError(str(e.args[0])) from None
    if not recipe.learned:
        raise InputError(f"recipe {recipe.name} is not a learned method; use its own command")
    particles = read_particles(args.input, poses=args.poses, ctf=args.ctf)
    known = Known(poses=particles.rotations is not None, ctf=particles.ctf is not None)
    if not recipe.accepts(known):
        need = ", ".join(sorted(recipe.needs))
        raise InputError(f"{args.input}: recipe {recipe.name} needs {need} in the particle metadata")
    overrides = parse_overrides(args)
    if "resume" in overrides and "resume" not in recipe.defaults:
        raise InputError(f"recipe {recipe.name} cannot resume")
    try:
        config = recipe.config(overrides)
    except KeyError as e:
        raise InputError(str(e.args[0])) from None
    device = init_distributed(pick_device(args.device)) or pick_device(args.device)
    run = RunFolder(args.out)
    if is_main():
        run.write_config("train", {"recipe": recipe.name, "input": args.input, "poses": args.poses,
                                   "ctf": args.ctf, "device": str(device), **config})
    try:
        out = recipe.fit(particles, known, run, config, device, not args.quiet)
    finally:
        finish_distributed()
    if not is_main():
        return 0
    metrics = {"recipe": recipe.name, "n_images": len(particles), "box_size": particles.box_size,
               "pixel_size": particles.pixel_size, **out.metrics}
    run.write_metrics({**run.read_json("metrics.json"), **metrics})
    if out.volume is not None:
        plot_sections({"map": out.volume.numpy()}, run.path("sections.png"))
    write_report(run.root, f"cryolens train {recipe.name} — {args.input}")
    print(f"trained {recipe.name} on {len(particles)} images; wrote {run.root}/ (map.mrc"
          + (", z.npy" if out.latents is not None else "") + ", checkpoint.pt, log.jsonl, report.html)")
    return 0

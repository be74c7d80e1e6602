"""Ab initio reconstruction from random starts (cryoSPARC-style), then refinement.

K = 1: ab initio map, then gold-standard auto-refinement (map.mrc, half1/2.mrc, fsc.png). K > 1
(--classes): multi-class ab initio, then 3D classification from the K maps (class_*.mrc). Always:
abinit_class_*.mrc, particles.star (final poses; rlnClassNumber, 1-based, when K > 1), metrics.json,
per-iteration plots, checkpoints and report.html in --out. --init-map gives a warm start instead of
random noise; --no-refine stops after the ab initio stage.

  cryolens abinit particles.star --out run/ --seed 1
  cryolens abinit particles.star --out run/ --classes 2
  cryolens abinit particles.star --out run/ --init-map start.mrc --iterations 100
  cryolens abinit particles.star --out run/ --resume      # continue a killed run
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="particles: RELION .star or cryoSPARC .cs (CTF needed; poses are searched)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--classes", type=int, default=1, help="number of classes K (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts and mini-batches")
    p.add_argument("--init-map", help="warm start map (.mrc) instead of random noise")
    p.add_argument("--iterations", type=int, default=300, help="ab initio mini-batch iterations (default 300)")
    p.add_argument("--batch-size", type=int, default=90, help="initial mini-batch size (default 90)")
    p.add_argument("--final-batch-size", type=int, default=300, help="mini-batch size after half the iterations")
    p.add_argument("--initial-resolution", type=float, default=35.0, help="Å (default 35)")
    p.add_argument("--final-resolution", type=float, default=12.0, help="Å (default 12)")
    p.add_argument("--grid-level", type=int, default=2, help="SO(3) grid level of the ab initio search (2 = 15°)")
    p.add_argument("--max-shift", type=float, default=3.0, help="translation search range, px (default 3)")
    p.add_argument("--no-refine", action="store_true", help="stop after the ab initio stage")
    p.add_argument("--handover-lowpass", type=float, default=30.0,
                   help="Å: low-pass of the ab initio map that starts refinement / classification (default 30, "
                        "cryoSPARC's; 12 = the ab initio's final resolution)")
    p.add_argument("--refine-max-iterations", type=int, default=30, help="cap on refinement iterations (30)")
    p.add_argument("--relax-sym", metavar="Cn", default="C1",
                   help="refinement: pseudo-symmetry (C2, ...) whose mates the local searches also visit (axis "
                        "found on the ab initio map; RELION 4's --relax_sym); default C1, none")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report
    from ..errors import InputError
    from ..io.dataset import read_particles
    from ..io.runfolder import RunFolder
    from ..methods.registry import Known, get
    from .common import pick_device

    if args.classes < 1:
        raise InputError(f"--classes {args.classes}: need at least 1")
    device = pick_device(args.device)
    particles = read_particles(args.input)
    recipe = get("cryosparc-abinit" if args.classes == 1 else "cryosparc-abinit-hetero")
    config = recipe.config({"n_classes": args.classes, "seed": args.seed, "init_map": args.init_map,
                            "n_iterations": args.iterations, "batch_size": args.batch_size,
                            "final_batch_size": args.final_batch_size,
                            "initial_resolution": args.initial_resolution,
                            "final_resolution": args.final_resolution, "grid_level": args.grid_level,
                            "max_shift": args.max_shift, "refine": not args.no_refine, "resume": args.resume,
                            "handover_lowpass": args.handover_lowpass,
                            "refine_options": {"max_iterations": args.refine_max_iterations,
                                               "relax_symmetry": args.relax_sym}})
    run = RunFolder(args.out)
    run.write_config("abinit", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    out = recipe.fit(particles, Known(poses=False, ctf=True), run, config, device, not args.quiet)
    write_report(run.root, f"cryolens abinit — {args.input}")
    if "resolution_halfmap_0143_A" in out.metrics:
        print(f"refined half-map resolution (FSC 0.143): {out.metrics['resolution_halfmap_0143_A']:.2f} Å")
    if "class_prior" in out.metrics:
        print("classes: " + ", ".join(f"{100 * p:.1f} %" for p in out.metrics["class_prior"]))
    print(f"wrote {run.root}: maps, particles.star, metrics.json and report.html")
    return 0

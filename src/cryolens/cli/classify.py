"""3D classification into K classes, RELION Class3D-style (poses searched, CTF known).

Writes class_001.mrc … class_K.mrc, particles.star (poses and rlnClassNumber, 1-based; RELION reads
it), metrics.json, class_populations.png, resolution.png, log_likelihood.png, class_sections.png,
checkpoint.pt and report.html into --out. Without --init-map a homogeneous ab initio map is made first.

  cryolens classify particles.star --classes 2 --out run/ --init-map start.mrc
  cryolens classify particles.star --classes 3 --out run/ --healpix-order 2 --iterations 15
  cryolens classify particles.star --classes 2 --out run/ --resume      # continue a killed run
  cryolens classify refined/particles.star --classes 2 --out run/ --init-map refined/map.mrc --skip-align
                                        # keep the consensus refinement's poses (RELION's --skip_align)
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="particles: RELION .star or cryoSPARC .cs (CTF needed; poses are searched, "
                                 "or kept with --skip-align)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--classes", type=int, required=True, help="number of classes K")
    p.add_argument("--init-map", help="start map (.mrc), low-passed to --initial-lowpass; default: ab initio")
    p.add_argument("--iterations", type=int, default=25, help="EM iterations (RELION default 25)")
    p.add_argument("--tau2-fudge", type=float, default=4.0, help="regularisation parameter T (default 4)")
    p.add_argument("--healpix-order", type=int, default=3, help="SO(3) grid level: 2 = 15°, 3 = 7.5° (default)")
    p.add_argument("--offset-range", type=float, default=5.0, help="translation search range, px (default 5)")
    p.add_argument("--offset-step", type=float, default=1.0, help="translation step, px (default 1)")
    p.add_argument("--initial-lowpass", type=float, default=60.0, help="start map low-pass, Å (default 60)")
    p.add_argument("--minres-map", type=int, default=5,
                   help="no MAP prior below this Fourier shell (RELION's --minres_map, default 5)")
    p.add_argument("--modal", action="store_true", help="hard assignment of the best (class, pose)")
    p.add_argument("--skip-align", action="store_true",
                   help="keep each particle's pose from the input (RELION's --skip_align); only classes are inferred")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the random first class assignment")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
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
    recipe = get("relion-class3d")
    config = recipe.config({"n_classes": args.classes, "n_iterations": args.iterations,
                            "tau2_fudge": args.tau2_fudge, "healpix_order": args.healpix_order,
                            "offset_range": args.offset_range, "offset_step": args.offset_step,
                            "initial_lowpass": args.initial_lowpass, "minres_map": args.minres_map,
                            "modal": args.modal, "skip_align": args.skip_align,
                            "batch_size": args.batch_size, "seed": args.seed, "init_map": args.init_map,
                            "resume": args.resume})
    run = RunFolder(args.out)
    run.write_config("classify", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    out = recipe.fit(particles, Known(poses=args.skip_align, ctf=True), run, config, device, not args.quiet)
    write_report(run.root, f"cryolens classify — {args.input}")
    pops = ", ".join(f"{100 * p:.1f} %" for p in out.metrics["class_prior"])
    print(f"classes: {pops}; resolution (data vs prior = 1): {out.metrics['resolution_A']:.2f} Å")
    print(f"wrote {run.root}/class_*.mrc, particles.star, metrics.json and report.html")
    return 0

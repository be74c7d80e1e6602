"""Convert particle metadata between RELION STAR, cryoSPARC .cs and cryoDRGN pickles.

The output format follows --out's suffix: .star (RELION 3.1; --star-version 3.0 for the old
layout), .cs (cryoSPARC), .pkl (cryoDRGN pose pickle). --ctf-out writes a cryoDRGN CTF pickle,
--poses-out a pose pickle, beside --out or instead of it. Images are not copied: the outputs point
at the input's stacks. Inputs are never overwritten.

  cryolens convert particles.star --out particles.cs
  cryolens convert particles.cs --out poses.pkl --ctf-out ctf.pkl
  cryolens convert particles.mrcs --poses poses.pkl --ctf ctf.pkl --out particles.star
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="particles: RELION .star, cryoSPARC .cs, or an .mrcs stack with --poses/--ctf")
    p.add_argument("--out", help="output file: .star, .cs or .pkl (cryoDRGN poses)")
    p.add_argument("--poses", help="cryoDRGN pose pickle to read with the input")
    p.add_argument("--ctf", help="cryoDRGN CTF pickle to read with the input")
    p.add_argument("--poses-out", help="also write a cryoDRGN pose pickle here")
    p.add_argument("--ctf-out", help="also write a cryoDRGN CTF pickle here")
    p.add_argument("--star-version", choices=["3.1", "3.0"], default="3.1",
                   help="STAR layout to write (default 3.1: data_optics + data_particles)")


def main(args: argparse.Namespace) -> int:
    from ..io.convert import convert

    particles, written = convert(args.input, args.out, poses=args.poses, ctf=args.ctf, poses_out=args.poses_out,
                                 ctf_out=args.ctf_out, star_version=args.star_version)
    have = [name for name, v in (("poses", particles.rotations), ("shifts", particles.shifts),
                                 ("CTF", particles.ctf)) if v is not None]
    print(f"read {len(particles)} particles ({', '.join(have) or 'no poses or CTF'}) from {args.input}")
    for path in written:
        print(f"wrote {path}")
    return 0

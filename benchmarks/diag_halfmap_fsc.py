"""Gold-standard FSC diagnostics: the half-map FSC of one set of poses and half-sets, three ways.

Input: a STAR with poses and ``rlnRandomSubset`` (e.g. a refinement's ``particles.star``). From the
same poses it reconstructs each half-set

  unfiltered   with cryolens' accumulator, weak regularisation only (what cryolens reports since
               the fix: RELION's ``_unfil`` half maps);
  filtered     the same halves MAP/Wiener-filtered with ``λ = W (1 − FSC) / FSC`` from the unfiltered
               FSC (what cryolens reported before: both halves filtered by one shared prior);
  relion       ``relion_reconstruct --subset 1/2 --ctf`` (RELION 3.1, unregularised);

and prints the three FSC curves, their 0.143 resolutions and, with ``--reference``, the full map's
FSC-vs-truth 0.5 resolution (unfiltered halves joined), which the 0.143 crossing should approach.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diag_halfmap_fsc.py RUN/particles.star \
      [--reference truth.mrc] [--no-relion]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("star", help="particles with poses and rlnRandomSubset")
    ap.add_argument("--reference", help="ground-truth map (.mrc) for the FSC-vs-truth line")
    ap.add_argument("--no-relion", action="store_true", help="skip relion_reconstruct")
    a = ap.parse_args()

    from cryolens.bench import relion
    from cryolens.inference.reconstruct import wiener_regularisation
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import read_volume
    from cryolens.methods.backprojection import accumulate
    from cryolens.metrics.fsc import fsc, resolution_at

    p = read_particles(a.star)
    d, px = p.box_size, p.pixel_size
    h1, h2 = accumulate(p, progress=False)
    w1, w2 = h1.shell_weight(), h2.shell_weight()
    eps = 1e-3 * torch.ones(d // 2 + 1, dtype=torch.float64)
    u1, u2 = h1.reconstruct(eps * w1.mean()), h2.reconstruct(eps * w2.mean())
    curves = {"unfiltered": np.asarray(fsc(u1, u2))}
    f1 = h1.reconstruct(wiener_regularisation(w1, curves["unfiltered"]))
    f2 = h2.reconstruct(wiener_regularisation(w2, curves["unfiltered"]))
    curves["filtered"] = np.asarray(fsc(f1, f2))
    if not a.no_relion:
        star = Path(a.star).resolve()
        with tempfile.TemporaryDirectory() as tmp:
            halves = [relion.reconstruct_star(star, tmp, ctf=p.ctf is not None, output=f"half{s}.mrc",
                                              extra_args=["--subset", s]) for s in (1, 2)]
        curves["relion"] = np.asarray(fsc(torch.as_tensor(halves[0]), torch.as_tensor(halves[1])))
    print(f"{len(p)} images, D {d}, {px} Å/px; shells 0..{d // 2}")
    for name, c in curves.items():
        res = resolution_at(c, 0.143, px, d)
        print(f"{name:>10}: 0.143 at {res:6.2f} Å; mean FSC beyond shell {d // 4}: {c[d // 4:].mean():+.3f}")
        print("            " + " ".join(f"{x:+.2f}" for x in c))
    if a.reference:
        ref, _ = read_volume(a.reference)
        full = h1.merged(h2).reconstruct(eps * (w1.mean() + w2.mean()))
        print(f"map vs reference: 0.5 at {resolution_at(fsc(full, torch.as_tensor(ref)), 0.5, px, d):.2f} Å")


if __name__ == "__main__":
    main()

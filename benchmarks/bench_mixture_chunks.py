"""Peak memory and time of one image-space mixture sum (:func:`cryolens.imaging.gaussian.mixture_projections`)
for a large batch of a large model, one-shot (under autograd, as in training) against chunked over the Gaussians
(without autograd, as in pose passes and scoring), each in a fresh process.

Model: 7PBL, one Gaussian per residue (1,957: the ``assembly`` benchmark task's mixture when ``atomvae`` runs with
``per=residue``), centres drawn at random (the values do not matter for memory), D 64. Rows: ``--rows`` images
(AtomVAE's pose pass evaluates 256 images × 8 rotation hypotheses × 2 symmetrized branches = 4,096). Peak RSS is
the child's ``ru_maxrss`` (it includes the interpreter and torch, printed as "before").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mixture_chunks.py --rows 1024
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def child(rows: int, mode: str) -> None:
    import torch

    from cryolens.imaging.gaussian import mixture_projections
    from cryolens.imaging.rotations import random_rotations
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model

    torch.set_num_threads(1)
    atoms = read_atoms(bundled_model("7pbl"))
    m = len(set(zip(atoms.chain_ids, atoms.residue_numbers)))
    g = torch.Generator().manual_seed(0)
    centres, sigmas, amps = torch.randn(1, m, 3, generator=g) * 10, torch.full((1, m), 1.5), torch.ones(1, m)
    rots = random_rotations(rows, generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    t0 = time.perf_counter()
    with torch.enable_grad() if mode == "one-shot" else torch.no_grad():
        mixture_projections(centres, sigmas, amps, rots, 64)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"| {mode} | {m} | {rows} | {time.perf_counter() - t0:.1f} s | {peak:.2f} GB (before {before:.2f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--child", choices=["one-shot", "chunked"])
    a = ap.parse_args()
    if a.child:
        child(a.rows, a.child)
        return
    print("| sum | Gaussians | rows | time | peak RSS |\n|---|---|---|---|---|")
    for mode in ("one-shot", "chunked"):
        subprocess.run([sys.executable, __file__, "--rows", str(a.rows), "--child", mode], check=True)


if __name__ == "__main__":
    main()

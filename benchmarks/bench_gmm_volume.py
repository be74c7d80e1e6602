"""The Gaussian-mixture volume on the issue's geometry (4E43, D = 64, 1.5 Å/px): how well its two builders
reproduce the simulator's map, and what its operations cost.

  1. ``from_atoms`` per atom and per residue against ``atoms_to_volume`` (the simulator's five-term
     form-factor map): FSC at half Nyquist and the 0.5-crossing resolution;
  2. ``fit_to_map`` of that map with N Gaussians (N = number of residues, and 4×): time, FSC at half Nyquist
     and the 0.5-crossing resolution;
  3. forward + backward time of a batch of 32 images: ``project`` (real space, separable),
     ``project_fourier`` (the central slices on the image grid, separable) and ``fourier`` on the 2D slice
     points inside Nyquist, for a per-residue and a per-atom mixture.

  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_gmm_volume.py [--steps 200] [--device cpu]
                                                                           [--skip-fit]
"""

from __future__ import annotations

import argparse
import time

import torch

from cryolens.imaging import random_rotations
from cryolens.imaging.grids import freq_grid_2d
from cryolens.io.atomic import read_atoms
from cryolens.metrics.fsc import fsc, resolution_at
from cryolens.simulate import atoms_to_volume, bundled_model
from cryolens.volumes.gaussian_mixture import GaussianMixtureVolume, fit_to_map, from_atoms

D, PX = 64, 1.5


def _score(vol: GaussianMixtureVolume, truth: torch.Tensor) -> str:
    curve = fsc(vol.render()[0].cpu(), truth.cpu())
    return f"FSC at half Nyquist {curve[D // 4]:.3f}, 0.5-crossing {resolution_at(curve, 0.5, PX, D):.2f} Å"


def _timed(fn, device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _throughput(vol: GaussianMixtureVolume, device, batch: int = 32) -> str:
    rots = random_rotations(batch, generator=torch.Generator().manual_seed(0)).to(device)
    f2 = freq_grid_2d(D, device=device).reshape(-1, 2)
    f2 = f2[f2.norm(dim=-1) < 0.5]
    pts = torch.einsum("kj,bij->bki", torch.cat([f2, torch.zeros_like(f2[:, :1])], 1), rots)  # R · [kx, ky, 0]

    def proj():
        vol.zero_grad()
        vol.project(rots).square().sum().backward()

    def four():
        vol.zero_grad()
        vol.hartley(pts).square().sum().backward()

    def slices():
        vol.zero_grad()
        vol.project_fourier(rots).abs().square().sum().backward()

    return f"project {_timed(proj, device) * 1e3:.0f} ms, project_fourier ({D}² grid) " \
           f"{_timed(slices, device) * 1e3:.0f} ms, fourier ({pts.shape[1]} points/image) " \
           f"{_timed(four, device) * 1e3:.0f} ms per batch of {batch} (forward + backward)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-fit", action="store_true", help="only parts 1 and 3")
    args = ap.parse_args()
    device = torch.device(args.device)
    atoms = read_atoms(bundled_model("4E43"))
    truth = atoms_to_volume(atoms, D, PX, device=device)
    built = {}
    for per in ("residue", "atom"):
        t0 = time.perf_counter()
        built[per] = from_atoms(atoms, D, PX, per=per, device=device)
        print(f"from_atoms per {per}: N = {built[per].n_gaussians}, {time.perf_counter() - t0:.2f} s, "
              f"{_score(built[per], truth)}", flush=True)
    n_res = built["residue"].n_gaussians
    for n in () if args.skip_fit else (n_res, 4 * n_res):
        t0 = time.perf_counter()
        fitted = fit_to_map(truth, PX, n, steps=args.steps, device=device)
        print(f"fit_to_map N = {n}, {args.steps} steps: {time.perf_counter() - t0:.1f} s, {_score(fitted, truth)}",
              flush=True)
    for per, vol in built.items():
        print(f"per {per} (N = {vol.n_gaussians}): {_throughput(vol, device)}", flush=True)


if __name__ == "__main__":
    main()

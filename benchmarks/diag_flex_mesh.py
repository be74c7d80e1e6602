"""Issue 23: where one stage-1 step of ``3dflex`` spends its time as the mesh gets finer.

The model is set up as ``methods/flex3d.py`` does (consensus back-projection Fourier-cropped to
``--train-box``, low-passed to 10 Å, σ² from its residual; images cropped the same way), one batch of
``--batch`` images, one thread. For each ``--cells`` it times (wall, ms per image, median of ``--reps``
after one warm-up step) the engine step's parts: the per-image Gauss–Newton latent step
(:meth:`~cryolens.inference.flex.FlexModel.update_latents`: ``zdim + 2`` no-grad forward passes), the
generator's forward, the convected projection (flow interpolation and convection), the rigidity and
smoothness terms, the backward pass and Adam's step; then a ``torch.profiler`` table of one step.

    cryolens simulate --model 4E43 --motion hinge --n-states 10 --angles 0 40 --n 200 --box 64 --apix 1.5 \\
        --snr 0.1 --seed 0 --out DATA
    OMP_NUM_THREADS=1 python benchmarks/diag_flex_mesh.py DATA --cells 8 16 32 --train-box 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_flex import batch_of  # noqa: E402


def setup(folder: Path, cells: int, box: int):
    """``(model, batch)``: the stage-1 model on the cropped images and the first batch, as ``3dflex`` builds them."""
    from cryolens.imaging.spectra import resize_volume
    from cryolens.inference.flex import crop_particles
    from cryolens.io.dataset import read_images
    from cryolens.io.star import read_star
    from cryolens.methods.backprojection import backproject
    from cryolens.methods.flex3d import Flex3DConfig, _flex_model

    particles = read_star(folder / "particles.star")
    bp = backproject(particles, device="cpu", seed=0, progress=False)
    small = crop_particles(particles, box, folder / f"_crop{box}.mrcs") if box < particles.box_size else particles
    config = Flex3DConfig(mesh_cells=cells, train_box=box)
    torch.manual_seed(0)
    model = _flex_model(small, resize_volume(bp.volume, small.box_size), config, "cpu")
    return model, small, read_images(small, np.arange(len(small)))


def step_parts(model, opt, batch: dict) -> dict[str, float]:
    """One engine step (``before_step``, forward, backward, Adam) split into timed parts (s)."""
    from cryolens.volumes.deformation import cell_mass, rigidity, smoothness

    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name] = now - t
        t = now

    model.update_latents(batch)
    lap("gauss-newton latent step")
    mu = model.table.mu[batch["index"]]
    z = mu + model.latent_noise * torch.randn_like(mu)
    flow = model.volume.flow(z)
    lap("generator forward")
    sq = model.squared_residuals(batch, flow)
    lap("convected projection forward")
    d = model.volume.box_size
    rig = rigidity(flow, d, cell_mass(model.volume.density, model.volume.cells))
    lap("rigidity forward")
    smooth = smoothness(flow)
    lap("smoothness forward")
    total = sq / (2 * model.sigma2) + 0.5 * mu.square().sum(-1) + 10 * rig + smooth
    opt.zero_grad(set_to_none=True)
    (total.mean() / d**2).backward()
    lap("backward (all)")
    opt.step()
    lap("adam step")
    out["total"] = sum(out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--cells", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--train-box", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one step")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for cells in a.cells:
        model, particles, images = setup(a.data, cells, a.train_box)
        model.train()
        opt = torch.optim.Adam(model.param_groups(), lr=1e-3)
        batch = batch_of(particles, images, np.arange(a.batch))
        runs = [step_parts(model, opt, batch) for _ in range(a.reps + 1)][1:]
        print(f"mesh {cells} (D {particles.box_size}, batch {a.batch}), ms per image, median of {a.reps}:")
        for k in runs[0]:
            print(f"  {k:32s} {1e3 * statistics.median(r[k] for r in runs) / a.batch:8.2f}")
        if a.profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                step_parts(model, opt, batch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()

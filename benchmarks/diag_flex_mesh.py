"""Issue 23: where one stage-1 step of ``3dflex`` spends its time as the mesh gets finer.

The model is set up as ``methods/flex3d.py`` does (consensus back-projection Fourier-cropped to
``--train-box``, low-passed to 10 Å, σ² from its residual; images cropped the same way), one batch of
``--batch`` images, one thread. For each ``--cells`` it times the engine step's parts in CPU time of the
process (the wall time of a quiet machine with one thread; ms per image, median of ``--reps`` after one
warm-up step): the per-image Gauss–Newton latent step
(:meth:`~cryolens.inference.flex.FlexModel.update_latents`: ``zdim + 2`` no-grad forward passes), the
generator's forward, the convected projection (flow interpolation and convection), the rigidity and
smoothness terms, the backward pass and Adam's step; and the step's wall time. ``--profile``: a
``torch.profiler`` table of one step. ``--rigidity``: the rigidity term alone, the code before
issue-flexmesh (its 3 × 3 products) against the library's, in the same process. ``--equality``: one
step's loss and generator gradient with either rigidity (float32; the model at its start and with its
flows ×300). Run it with ``PYTHONPATH`` at another ``src`` to time other code.

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
    """One engine step (``before_step``, forward, backward, Adam) split into parts (CPU s), and its wall time."""
    from cryolens.volumes.deformation import cell_mass, rigidity, smoothness

    out, t, wall = {}, time.process_time(), time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.process_time()
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
    out["total (CPU)"] = sum(out.values())
    out["total (wall)"] = time.perf_counter() - wall
    return out


def reference_rigidity(flow: torch.Tensor, box: int, w: torch.Tensor) -> torch.Tensor:
    """The rigidity term as computed before issue-flexmesh: every tetrahedron's 3 × 3 Jacobian, then ``FᵀF``."""
    from cryolens.volumes.deformation import tetra_jacobians, vertex_positions

    n = flow.shape[-1] - 1
    jac = tetra_jacobians(vertex_positions(n, box, dtype=flow.dtype) - flow, box / n)
    strain = (jac.transpose(-1, -2) @ jac - torch.eye(3, dtype=flow.dtype)).square().sum((-1, -2))
    return (strain * w).mean((1, 2, 3, 4))


def rigidity_cost(cells: int, box: int, batch: int, reps: int = 3) -> None:
    """CPU ms per image of the rigidity term's forward and backward on random flows of 1 px, the reference
    (:func:`reference_rigidity`) and the library's :func:`~cryolens.volumes.deformation.rigidity`, one process."""
    from cryolens.volumes.deformation import rigidity

    g = torch.Generator().manual_seed(0)
    f0, w = torch.randn(batch, 3, cells + 1, cells + 1, cells + 1, generator=g), torch.rand(cells, cells, cells)
    for name, fn in (("reference (3x3 products)", reference_rigidity), ("library", rigidity)):
        fw, bw = [], []
        for _ in range(reps):
            f = f0.clone().requires_grad_(True)
            t0 = time.process_time()
            r = fn(f, box, w)
            t1 = time.process_time()
            r.sum().backward()
            fw.append(t1 - t0)
            bw.append(time.process_time() - t1)
        ms = [1e3 * statistics.median(x) / batch for x in (fw, bw)]
        print(f"  rigidity, {name:26s} forward {ms[0]:7.2f}  backward {ms[1]:7.2f} ms per image")


def gradient_check(model, batch: dict, gain: float) -> str:
    """One training loss and its generator gradient (float32) with the library's rigidity and with
    :func:`reference_rigidity`, the generator's output layer first scaled by ``gain`` (larger flows): their
    relative differences."""
    import cryolens.inference.flex as flex
    from cryolens.volumes.deformation import rigidity

    with torch.no_grad():
        model.volume.generator.out.weight.mul_(gain)
    res = []
    try:
        for fn in (rigidity, reference_rigidity):
            flex.rigidity = fn
            torch.manual_seed(1)
            model.volume.generator.zero_grad()
            out = model(batch)
            out["loss"].backward()
            res.append((out["loss"].item(), out["rigidity"].item(),
                        torch.cat([p.grad.ravel() for p in model.volume.generator.parameters()])))
    finally:
        flex.rigidity = rigidity
        with torch.no_grad():
            model.volume.generator.out.weight.div_(gain)
    (l0, r0, g0), (l1, r1, g1) = res
    dg = float((g0 - g1).abs().max() / g1.abs().max())
    return (f"output layer x{gain:g}: loss rel. diff. {abs(l0 - l1) / abs(l1):.1e}, rigidity {r1:.3g} rel. diff. "
            f"{abs(r0 - r1) / abs(r1):.1e}, generator gradient max rel. diff. {dg:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--cells", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--train-box", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one step")
    ap.add_argument("--rigidity", action="store_true", help="only time the rigidity term, reference and library")
    ap.add_argument("--equality", action="store_true", help="compare one step's loss and gradient, reference "
                    "rigidity against the library's (float32)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for cells in a.cells:
        if a.rigidity:
            print(f"mesh {cells}, batch {a.batch}:")
            rigidity_cost(cells, a.train_box, a.batch, a.reps)
            continue
        model, particles, images = setup(a.data, cells, a.train_box)
        model.train()
        opt = torch.optim.Adam(model.param_groups(), lr=1e-3)
        batch = batch_of(particles, images, np.arange(a.batch))
        if a.equality:
            print(f"mesh {cells}:", *(gradient_check(model, batch, gain) for gain in (1.0, 300.0)), sep="\n  ")
            continue
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

"""Issue 23 diagnostic: which half of 3dflex's autodecoder fails to find a hinge.

On a simulated hinge dataset (``cryolens simulate --motion hinge``, poses and CTF known) the model of
``3dflex`` (:class:`~cryolens.inference.flex.FlexModel`, set up as ``methods/flex3d.py`` does: consensus
back-projection low-passed to ``flow_lowpass_A`` as the fixed canonical map, σ² from its residual) is
trained by a plain loop (not the engine, so that either half can be frozen):

- ``--mode gen``: the latents held at the TRUE hinge coordinate (standardised angle in z[0], 0 elsewhere),
  only the generator trained. Reports the loss against the zero flow and whether the decoded maps at the
  extreme states match their own ground-truth state better than the other inside the moving-domain mask.
- ``--mode z``: the generator saved by ``--mode gen`` frozen, the latents optimised from ``N(0, I)``.
- ``--mode joint``: both (what the recipe does).
- ``--mode lbfgs --run RUN``: the flexible-reconstruction stage of a finished ``bench_flex.py`` run on half 1
  (back-projection; 10 L-BFGS iterations with the learnt flows; the same with zero flows).

``--z-opt`` chooses the latents' optimiser: ``gn`` (the recipe's per-image Gauss-Newton step,
:meth:`~cryolens.inference.flex.FlexModel.update_latents`, and the recentring after every epoch), ``dense``
(Adam over the whole table at ``--z-lr``: the code before issue-flex2), ``rowadam`` (:class:`RowAdam`, a
lazy per-row Adam). ``--torch-init``: the generator's hidden layers with PyTorch's default init (before
issue-flex2). Every epoch prints |Spearman(PC1 z, angle)| and the masked correlations of the decoded
extreme states with the ground truth.

    OMP_NUM_THREADS=1 python benchmarks/diag_flex.py DATA --mode gen --epochs 4 --save /tmp/gen.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flex import moving_mask  # noqa: E402
from continuous_dataset import ground_truth_maps  # noqa: E402


def setup(folder: Path, a) -> tuple:
    """``(model, particles, images, angles, maps, mask)`` as ``methods/flex3d.py`` sets the model up."""
    from cryolens.imaging.grids import lowpass_volume
    from cryolens.inference.flex import FlexModel, noise_variance
    from cryolens.io.dataset import read_images
    from cryolens.io.star import read_star
    from cryolens.methods.backprojection import backproject

    particles = read_star(folder / "particles.star")
    maps, _, angles, px = ground_truth_maps(folder)
    images = read_images(particles, np.arange(len(particles)))
    bp = backproject(particles, device="cpu", seed=0, progress=False)
    scale = float(images.std())
    start = lowpass_volume(bp.volume, a.lowpass, px) / scale
    torch.manual_seed(a.seed)
    model = FlexModel(particles.box_size, px, len(particles), a.zdim, a.cells, 6, 64, start, a.noise, a.prior,
                      a.rigidity, a.smooth, a.z_step, a.seed)
    model.volume.density.requires_grad_(False)
    model.norm.fill_(scale)
    model.sigma2.fill_(noise_variance(particles, bp.volume / scale, scale))
    return model, particles, images, angles, maps, moving_mask(maps)


def batch_of(particles, images, idx: np.ndarray) -> dict:
    t = torch.as_tensor(idx)
    b = {"index": t, "image": images[t], "rotation": particles.rotations[t]}
    if particles.shifts is not None:
        b["shift"] = particles.shifts[t]
    if particles.ctf is not None:
        b["ctf"] = particles.ctf[t]
    return b


def pc1_spearman(z: np.ndarray, angles: np.ndarray) -> float:
    zc = z - z.mean(0)
    pc1 = zc @ np.linalg.svd(zc, full_matrices=False)[2][0]
    return abs(float(spearmanr(pc1, angles).correlation))


def masked_cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = (a - (a * mask).sum() / mask.sum()) * mask, (b - (b * mask).sum() / mask.sum()) * mask
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def flow_check(model, angles, maps, mask) -> str:
    """Masked correlation of the decoded maps at the two extreme states' z with each extreme state."""
    lo, hi = np.argmin(angles), np.argmax(angles)
    z = model.table.mu.detach()[[lo, hi]]
    with torch.no_grad():
        dec = model.volume.render(z).numpy()
        flow = model.volume.flow(z)
    v0 = model.volume.density.detach().numpy()
    m = [maps[0], maps[-1]]
    rows = [f"V0 {masked_cc(v0, m[0], mask):.3f}/{masked_cc(v0, m[1], mask):.3f}"]
    for k, name in enumerate(("z_lo", "z_hi")):
        rows.append(f"{name} {masked_cc(dec[k], m[0], mask):.3f}/{masked_cc(dec[k], m[1], mask):.3f}")
    rows.append(f"max|flow| {float(flow.abs().max()):.2f}px")
    return "  ".join(rows) + "  (cc vs state0/stateLast in the moving mask)"


class RowAdam(torch.optim.Optimizer):
    """Adam over the rows of one ``(N, L)`` table (per-image latents) that moves only the rows whose
    gradient is non-zero this step (the images of the batch), with a step count per row for the bias
    correction: dense Adam would keep moving every row on its stale momentum after its image left the
    batch. ``lr``, ``betas``, ``eps`` as :class:`torch.optim.Adam`."""

    def __init__(self, table: torch.Tensor, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__([table], {"lr": float(lr), "betas": betas, "eps": float(eps)})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    st["t"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                rows = (p.grad != 0).any(-1).nonzero()[:, 0]
                g = p.grad[rows]
                st["t"][rows] += 1
                st["m"][rows] = b1 * st["m"][rows] + (1 - b1) * g
                st["v"][rows] = b2 * st["v"][rows] + (1 - b2) * g.square()
                t = st["t"][rows, None]
                m_hat, v_hat = st["m"][rows] / (1 - b1**t), st["v"][rows] / (1 - b2**t)
                p[rows] -= group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
        return None


@torch.no_grad()
def whiten_latents(model) -> None:
    """z ← W (z − m) with W the inverse square root of the latents' covariance; the generator's first layer
    takes z = W⁻¹ z' + m so that every image's flow is unchanged."""
    mu = model.table.mu
    m = mu.mean(0)
    cov = torch.cov((mu - m).T).reshape(mu.shape[1], mu.shape[1])
    evals, evecs = torch.linalg.eigh(cov)
    w_inv = evecs @ torch.diag(evals.clamp(min=1e-12).sqrt()) @ evecs.T
    w = evecs @ torch.diag(evals.clamp(min=1e-12).rsqrt()) @ evecs.T
    mu.copy_((mu - m) @ w.T)
    first = model.volume.generator.hidden[0]
    first.bias.add_(first.weight @ m)
    first.weight.copy_(first.weight @ w_inv)


def lbfgs_check(folder: Path, run: Path, iterations: int) -> None:
    """The flexible-reconstruction stage on half 1 of a finished ``bench_flex.py`` run (``run``: its folder
    with ``checkpoint.pt``; mesh and zdim from its ``model.json``): the half's back-projection, L-BFGS from it
    with the learnt flows, and the same with zero flows, each scored as ``bench_flex.py`` does."""
    import json

    from bench_flex import best_resolution
    from cryolens.inference.flex import FlexModel, refine_canonical
    from cryolens.inference.training import sample_images
    from cryolens.io.checkpoint import load_checkpoint
    from cryolens.io.particles import half_set_labels
    from cryolens.io.star import read_star
    from cryolens.methods.backprojection import backproject

    p = read_star(folder / "particles.star")
    maps, _, _, px = ground_truth_maps(folder)
    mask, c = moving_mask(maps), json.loads((run / "model.json").read_text())["config"]
    bp = backproject(p, device="cpu", seed=0, progress=False)
    scale, d = float(sample_images(p, 1000, 0).std()), p.box_size
    model = FlexModel(d, px, len(p), c["zdim"], c["mesh_cells"], c["gen_layers"], c["gen_dim"], torch.zeros(d, d, d),
                      0.5, 1.0, 10.0, 1.0)
    model.load_state_dict(load_checkpoint(run / "checkpoint.pt", map_location="cpu")["model"])
    model.eval()
    idx = np.nonzero(half_set_labels(p, 0) == 0)[0]
    maps_out = {"half-1 back-projection": bp.half1.numpy()}
    maps_out["L-BFGS, learnt flows"] = (refine_canonical(model, p, idx, bp.half1 / scale, iterations) * scale).numpy()
    with torch.no_grad():
        model.volume.generator.out.weight.zero_()
        model.volume.generator.out.bias.zero_()
    maps_out["L-BFGS, zero flows"] = (refine_canonical(model, p, idx, bp.half1 / scale, iterations) * scale).numpy()
    for name, v in maps_out.items():
        print(f"{name}: moving {best_resolution(v, maps, mask, px)[0]:.2f} Å, "
              f"whole {best_resolution(v, maps, None, px)[0]:.2f} Å", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--mode", choices=("gen", "z", "joint", "lbfgs"), default="joint")
    ap.add_argument("--run", type=Path, help="--mode lbfgs: a finished bench_flex.py run folder")
    ap.add_argument("--z-opt", choices=("dense", "rowadam", "gn"), default="gn")
    for name, default in (("epochs", 4), ("batch", 32), ("lr", 1e-3), ("z_lr", 0.1), ("z_step", 1.0), ("zdim", 2),
                          ("cells", 8), ("noise", 0.5), ("prior", 1.0), ("rigidity", 10.0), ("smooth", 1.0),
                          ("lowpass", 10.0), ("init", 0.0), ("seed", 0)):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=default)
    ap.add_argument("--no-recentre", action="store_true", help="no recentring of the latents (z-opt gn)")
    ap.add_argument("--gen-first", action="store_true", help="the generator's step before the latents'")
    ap.add_argument("--center", action="store_true", help="whiten the latents after every epoch")
    ap.add_argument("--torch-init", action="store_true",
                    help="the generator's hidden layers with PyTorch's default init (the code before issue-flex2)")
    ap.add_argument("--save", type=Path)
    ap.add_argument("--load", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.mode == "lbfgs":
        return lbfgs_check(a.data, a.run, 10)
    model, particles, images, angles, maps, mask = setup(a.data, a)
    if a.torch_init:
        for layer in model.volume.generator.hidden:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    if a.init > 0:
        torch.nn.init.normal_(model.volume.generator.out.weight, std=a.init)
    if a.load:
        model.volume.generator.load_state_dict(torch.load(a.load))
    if a.mode == "gen":
        true = (angles - angles.mean()) / angles.std()
        model.table.mu.data.zero_()
        model.table.mu.data[:, 0] = torch.as_tensor(true, dtype=torch.float32)
    gen = [p for p in model.volume.generator.parameters()]
    opts = []
    if a.mode != "z":
        opts.append(torch.optim.Adam(gen, lr=a.lr))
    else:
        for p in gen:
            p.requires_grad_(False)
    if a.mode != "gen" and a.z_opt != "gn":
        model.table.mu.requires_grad_(True)
        zopt = RowAdam(model.table.mu, lr=a.z_lr) if a.z_opt == "rowadam" else torch.optim.Adam([model.table.mu],
                                                                                                 lr=a.z_lr)
        opts.append(zopt)
    elif a.mode == "gen":
        model.table.mu.requires_grad_(False)
    print(f"sigma2 {float(model.sigma2):.3f}  start: {flow_check(model, angles, maps, mask)}", flush=True)
    rng = np.random.default_rng(a.seed)
    n = len(particles)
    for epoch in range(1, a.epochs + 1):
        t0, tot, mse = time.perf_counter(), 0.0, 0.0
        model.train()
        order = rng.permutation(n)
        for s in range(0, n, a.batch):
            idx = order[s:s + a.batch]
            batch = batch_of(particles, images, np.sort(idx))
            gn = a.mode != "gen" and a.z_opt == "gn"
            if gn and not a.gen_first:
                model.update_latents(batch)
            out = model(batch)
            for o in opts:
                o.zero_grad()
            if opts:
                out["loss"].backward()
            for o in opts:
                o.step()
            if gn and a.gen_first:
                model.update_latents(batch)
            tot, mse = tot + float(out["loss"]) * len(idx), mse + float(out["mse"]) * len(idx)
        if a.center:
            whiten_latents(model)
        if a.mode != "gen" and a.z_opt == "gn" and not a.no_recentre:
            model.recentre_latents()
        rho = pc1_spearman(model.table.mu.detach().numpy(), angles)
        print(f"epoch {epoch} loss {tot / n:.5f} mse {mse / n:.5f} |rho| {rho:.3f} "
              f"z-std {float(model.table.mu.std()):.2f} {time.perf_counter() - t0:.0f}s  "
              f"{flow_check(model, angles, maps, mask)}", flush=True)
    if a.save:
        torch.save(model.volume.generator.state_dict(), a.save)


if __name__ == "__main__":
    main()

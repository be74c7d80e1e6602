"""3DFlex's inference (Punjani & Fleet 2023; docs/METHODS.md "3DFlex"): per-image latents by an
autodecoder with fixed latent noise, the flow generator trained on the one engine with the canonical map
held (low-passed) fixed, and the canonical map then refined full-batch by L-BFGS with the flows held fixed.

Loss of one image ``i`` (negative log posterior, in nats; the batch loss is its mean divided by ``D²`` so
that it is O(1)):

    ‖CTF_i ∗ shift_i(P_{R_i} conv(V0, u(z̃_i)))  −  Y_i / s‖² / (2σ²)        (Gaussian likelihood)
    + ½ · prior_weight · ‖z_i‖²                                           (Gaussian prior on z)
    + rigidity_weight · rigidity(u)  +  smoothness_weight · smoothness(u)  (mesh structure terms)

with ``z̃_i = z_i + latent_noise · ε`` during training (``ε ~ N(0, I)``; 3DFlex's fixed isotropic noise:
the latent is a point estimate but the decoder must be robust to perturbations of that size), ``s`` the
image scale (std of the images), ``σ²`` the per-pixel noise variance of the scaled images
(:func:`noise_variance`), and the rigidity weighted per mesh cell by the canonical density inside it
(:func:`~cryolens.volumes.deformation.cell_mass`). Images are formed by the framework's forward model
(:class:`~cryolens.imaging.forward.ProjectorForward`: the convected map's real-space projection, shift
and CTF).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from torch import nn

from ..imaging.forward import ProjectorForward
from ..io.checkpoint import load_checkpoint
from ..imaging.convect import unconvect
from ..imaging.fft import fft2_centered, ifft2_centered
from ..imaging.spectra import fourier_crop_images
from ..io.dataset import iterate_batches, read_images
from ..io.mrc import StackWriter, read_volume
from ..io.particles import Particles
from ..volumes.deformation import DeformedVolume, cell_mass, rigidity, smoothness
from ..volumes.voxel import RealVoxelVolume
from .distributed import all_reduce_sum, is_distributed
from .encoders import LatentTable
from .reconstruct import FourierAccumulator, insert_images


class FlexModel(nn.Module):
    """The trainable 3DFlex model (module docstring): a :class:`DeformedVolume` and a :class:`LatentTable`.
    ``forward(batch) → {"loss", "mse", "prior", "rigidity", "smoothness"}`` (the engine's contract; ``mse``
    per pixel in scaled units). ``volume``: the starting canonical map ``(D, D, D)`` in scaled units."""

    def __init__(self, box_size: int, pixel_size: float, n_images: int, zdim: int, cells: int, layers: int,
                 hidden: int, volume: torch.Tensor, latent_noise: float, prior_weight: float,
                 rigidity_weight: float, smoothness_weight: float, z_step: float = 1.0, seed: int = 0):
        super().__init__()
        self.pixel_size, self.z_step, self.zdim = float(pixel_size), float(z_step), int(zdim)
        self.latent_noise, self.prior_weight = float(latent_noise), float(prior_weight)
        self.rigidity_weight, self.smoothness_weight = float(rigidity_weight), float(smoothness_weight)
        self.volume = DeformedVolume(box_size, zdim, cells, layers, hidden, volume)
        self.table = LatentTable(n_images, zdim, init_std=1.0, seed=seed)  # drawn from the prior N(0, I)
        self.table.mu.requires_grad_(False)  # moved by update_latents, not by the engine's optimiser
        self.forward_model = ProjectorForward()
        self.register_buffer("norm", torch.ones(()))
        self.register_buffer("sigma2", torch.ones(()))
        self._epoch_start: torch.Tensor | None = None

    def param_groups(self) -> list[dict]:
        """The generator (and ``V0`` where it is trainable) on the engine's optimiser; not the latents, which
        :meth:`update_latents` moves (engine hook ``before_step``)."""
        return [{"params": [p for n, p in self.named_parameters() if not n.startswith("table.") and p.requires_grad]}]

    def predict(self, batch: dict, z: torch.Tensor) -> torch.Tensor:
        """``(B, D, D)`` images (scaled units) of ``batch``'s poses, shifts and CTFs at latents ``z (B, L)``."""
        return self.forward_model(self.volume.at(z), batch["rotation"], batch.get("shift"), batch.get("ctf"),
                                  self.pixel_size)

    @torch.no_grad()
    def update_latents(self, batch: dict, h: float = 1e-2, max_step: float = 3.0) -> torch.Tensor:
        """One damped Gauss–Newton step on each image's own negative log posterior in ``z`` (likelihood and
        prior, the generator held fixed): ``Δ = (JᵀJ/σ² + λI)⁻¹ (Jᵀr/σ² − λz)`` with ``J (D², L)`` the
        derivative of the image in ``z`` (forward differences of ``h``), ``r`` the residual and ``λ`` the prior
        weight (at least 10⁻³); ``z += z_step · Δ``, ``‖Δ‖`` capped at ``max_step`` prior std. Returns the
        mean ``‖Δ‖`` (docs/METHODS.md "3DFlex": why not Adam)."""
        idx = batch["index"]
        z = self.table.mu[idx]
        b, dim = z.shape
        base = self.predict(batch, z).reshape(b, -1)
        resid = batch["image"].reshape(b, -1) / self.norm - base
        eye = torch.eye(dim, dtype=z.dtype, device=z.device)
        jac = torch.stack([(self.predict(batch, z + h * e).reshape(b, -1) - base) / h for e in eye], -1)
        lam = max(self.prior_weight, 1e-3)
        hess = jac.transpose(1, 2) @ jac / self.sigma2 + lam * eye
        grad = (jac.transpose(1, 2) @ resid[..., None])[..., 0] / self.sigma2 - lam * z
        step = torch.linalg.solve(hess, grad[..., None])[..., 0]
        step = self.z_step * step * (max_step / step.norm(dim=-1, keepdim=True).clamp(min=max_step))
        image = batch["image"].reshape(b, -1) / self.norm

        def nlp(zz: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:  # each image's -log posterior in z
            return (image - pred).square().sum(-1) / (2 * self.sigma2) + 0.5 * lam * zz.square().sum(-1)

        new = z + step
        better = nlp(new, self.predict(batch, new).reshape(b, -1)) < nlp(z, base)
        step = step * better[:, None]
        self.table.mu[idx] = z + step
        return step.norm(dim=-1).mean()

    def before_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        """Engine hook: the batch's latents by :meth:`update_latents` before the generator's step."""
        return {"z_step": self.update_latents(batch)} if self.training else {}

    def on_epoch_start(self, epoch: int, trainer=None) -> None:
        """Engine hook: remember the latents, so that the ranks' updates can be joined at the epoch's end."""
        self._epoch_start = self.table.mu.detach().clone()

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, trainer=None) -> None:
        """Engine hook: join the ranks' latent updates (each rank moved its own images' rows), then
        :meth:`recentre_latents`."""
        if self._epoch_start is not None and is_distributed():
            delta = self.table.mu - self._epoch_start
            all_reduce_sum(delta)
            self.table.mu.copy_(self._epoch_start + delta)
        self.recentre_latents()

    @torch.no_grad()
    def recentre_latents(self) -> None:
        """Centre the latents and scale them to the prior's second moment (``mean ‖z‖² = L``), the
        generator's first layer taking the inverse map, so that every image's flow is unchanged (the
        likelihood is invariant to this; the prior fixes the latent space's location and scale)."""
        mu = self.table.mu
        m = mu.mean(0)
        scale = float((mu - m).square().sum(-1).mean().div(mu.shape[1]).sqrt())
        if scale <= 0:
            return
        mu.sub_(m).div_(scale)
        first = self.volume.generator.hidden[0]
        first.bias.add_(first.weight @ m)
        first.weight.mul_(scale)

    def squared_residuals(self, batch: dict, flow: torch.Tensor, density: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` squared residual (scaled units) of each image of ``batch`` against the forward model of the
        canonical map (``density`` or ``V0``) convected along ``flow (B, 3, n+1, n+1, n+1)``."""
        pred = self.forward_model(self.volume.at(flow=flow, density=density), batch["rotation"], batch.get("shift"),
                                  batch.get("ctf"), self.pixel_size)
        return (pred - batch["image"] / self.norm).square().sum((-2, -1))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        mu = self.table.mu[batch["index"]]
        z = mu + self.latent_noise * torch.randn_like(mu) if self.training else mu
        flow = self.volume.flow(z)
        sq = self.squared_residuals(batch, flow)
        d = self.volume.box_size
        weights = cell_mass(self.volume.density, self.volume.cells)
        rig, smooth = rigidity(flow, d, weights), smoothness(flow)
        prior = 0.5 * self.prior_weight * mu.square().sum(-1)
        total = sq / (2 * self.sigma2) + prior + self.rigidity_weight * rig + self.smoothness_weight * smooth
        return {"loss": total.mean() / d**2, "mse": sq.mean() / d**2, "prior": prior.mean(),
                "rigidity": rig.mean(), "smoothness": smooth.mean()}

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Convected maps ``(B, D, D, D)`` in image units at latents ``z (B, L)``."""
        dev = self.volume.density.device
        return self.volume.render(z.to(dev).float()) * self.norm


@torch.no_grad()
def noise_variance(particles: Particles, volume: torch.Tensor, scale: float, n: int = 256, seed: int = 0,
                   device=None) -> float:
    """Per-pixel variance of ``images / scale`` minus the projections of ``volume (D, D, D)`` (scaled
    units; forward model :class:`ProjectorForward` at the known poses and CTFs) on up to ``n`` seeded
    images: the noise σ² of the likelihood (with heterogeneity the consensus leaves unexplained)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(particles), size=min(n, len(particles)), replace=False))
    device = torch.device(device or "cpu")
    t = torch.as_tensor(idx)
    images = read_images(particles, idx).to(device) / scale
    ctf = None if particles.ctf is None else particles.ctf[t].to(device)
    shifts = None if particles.shifts is None else particles.shifts[t].to(device)
    pred = ProjectorForward()(RealVoxelVolume(volume.shape[-1], volume).to(device), particles.rotations[t].to(device),
                              shifts, ctf, particles.pixel_size)
    return float((images - pred).square().mean())


def _batches(particles: Particles, indices: np.ndarray, batch_size: int, device) -> list[dict]:
    """The images ``indices`` as engine-style batch dicts on ``device`` (kept in memory for L-BFGS)."""
    out = []
    for s in range(0, len(indices), batch_size):
        idx = indices[s:s + batch_size]
        t = torch.as_tensor(idx)
        b = {"index": t.to(device), "image": read_images(particles, idx).to(device),
             "rotation": particles.rotations[t].to(device)}
        if particles.shifts is not None:
            b["shift"] = particles.shifts[t].to(device)
        if particles.ctf is not None:
            b["ctf"] = particles.ctf[t].to(device)
        out.append(b)
    return out


def refine_canonical(model: FlexModel, particles: Particles, indices: np.ndarray, start: torch.Tensor,
                     iterations: int = 20, ridge: float = 1e-3, batch_size: int = 64, device=None) -> torch.Tensor:
    """The canonical map ``(D, D, D)`` (scaled units) that best explains images ``indices`` with their
    flows held fixed at the latents' means: full-batch L-BFGS (strong Wolfe line search, ``iterations``
    iterations) on ``Σ_i ‖Y_i/s − A_i V0‖² / (2σ²) + ½ · ridge · ‖V0‖²`` (scaled by ``1 / (N D²)``),
    from ``start``. The model's own ``V0`` is left untouched."""
    device = torch.device(device or "cpu")
    if iterations <= 0:
        return start.detach().clone().to(device)
    batches = _batches(particles, np.asarray(indices), batch_size, device)
    with torch.no_grad():
        flows = [model.volume.flow(model.table.mu[b["index"]]) for b in batches]
    v = start.detach().clone().to(device).requires_grad_(True)
    scale = 1.0 / (max(len(indices), 1) * v.shape[-1] ** 2)
    opt = torch.optim.LBFGS([v], lr=1.0, max_iter=int(iterations), history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = (0.5 * ridge * scale) * v.square().sum()
        total.backward()
        total = total.detach()
        for b, flow in zip(batches, flows):
            part = model.squared_residuals(b, flow, v).sum() * (scale / (2 * float(model.sigma2)))
            part.backward()
            total = total + part.detach()
        return total

    opt.step(closure)
    return v.detach()


def crop_particles(particles: Particles, size: int, path: str | Path, batch_size: int = 256) -> Particles:
    """``particles`` Fourier-cropped to ``size × size`` px (:func:`~cryolens.imaging.spectra.fourier_crop_images`:
    pixel ``px·D/size`` Å, the frequencies up to its Nyquist kept exactly), written as one stack at ``path``;
    poses and CTFs unchanged, shifts in px of the new box."""
    d = particles.box_size
    px = particles.pixel_size * d / size
    with StackWriter(path, len(particles), size, px) as w:
        for idx, images in iterate_batches(particles, batch_size):
            w.write(int(idx[0]), ifft2_centered(fourier_crop_images(fft2_centered(images), size)).real)
    n = len(particles)
    return Particles(pixel_size=px, box_size=size, image_files=[str(path)], image_file_index=np.zeros(n, np.int64),
                     image_index=np.arange(n), rotations=particles.rotations,
                     shifts=None if particles.shifts is None else particles.shifts * (size / d), ctf=particles.ctf,
                     extra=dict(particles.extra), source=particles.source)


@torch.no_grad()
def rescale_flows(source: FlexModel, target: FlexModel) -> None:
    """Copy ``source``'s generator and latents into ``target`` (the same mesh on another box), the generator's
    output scaled by the ratio of the boxes so that every image's flow is the same motion in Å."""
    target.volume.generator.load_state_dict(source.volume.generator.state_dict())
    out = target.volume.generator.out
    ratio = target.volume.box_size / source.volume.box_size
    out.weight.mul_(ratio)
    out.bias.mul_(ratio)
    target.table.mu.copy_(source.table.mu)


@torch.no_grad()
def flexible_backprojection(model: FlexModel, particles: Particles, indices: np.ndarray, groups: int, pad: int = 2,
                            batch_size: int = 64, seed: int = 0, device=None) -> torch.Tensor:
    """A canonical map ``(D, D, D)`` (image units) of images ``indices`` with their flows held fixed, by Fourier
    insertion: the images grouped by k-means on their latents (``groups``); each group's sums ``Σ c X̃``
    divided by the sums ``Σ c²`` of *all* the images (+ ε = 10⁻³ × their mean, as the back-projection's half
    maps), so that the groups' maps add up to the half's back-projection when the flows are zero; each
    pulled back to the canonical frame along its group's flow at the mean latent
    (:func:`~cryolens.imaging.convect.unconvect`) and summed."""
    device = torch.device(device or "cpu")
    idx = np.asarray(indices)
    z = model.table.mu[torch.as_tensor(idx)].double().cpu().numpy()
    k = max(1, min(int(groups), len(idx)))
    rng = np.random.default_rng(seed)
    _, labels = kmeans2(z, z[rng.choice(len(idx), k, replace=False)], iter=20, minit="matrix", rng=seed)
    d = particles.box_size
    accs = [FourierAccumulator(d, pad, device) for _ in range(k)]
    group = np.zeros(len(particles), np.int64)
    group[idx] = labels
    for batch, images in iterate_batches(particles, batch_size, idx):
        t = torch.as_tensor(batch)
        for g in np.unique(group[batch]):
            m = torch.as_tensor(group[batch] == g)
            insert_images(accs[g], particles, t[m], images[m], device)
    total = FourierAccumulator(d, pad, device)
    total.staging = sum(a.staging for a in accs if a.count)
    eps = 1e-3 * total.shell_weight().mean() * torch.ones(d // 2 + 1, dtype=torch.float64)
    out = torch.zeros(d, d, d)
    for g, acc in enumerate(accs):
        if not acc.count:
            continue
        acc.staging = torch.cat([acc.staging[:2], total.staging[2:]])
        flow = model.volume.flow(torch.as_tensor(z[labels == g].mean(0), dtype=torch.float32, device=device)[None])
        out += unconvect(acc.reconstruct(eps.to(device)).float(), flow).cpu()
    return out


def load_flex_model(run: str | Path, meta: dict, device=None) -> FlexModel:
    """A finished 3dflex run folder as a :class:`FlexModel` in eval mode on ``device``: ``meta`` is its
    ``model.json`` (box, pixel size, number of images, the recipe's options), the generator and latents come
    from ``flex_model.pt`` (the model at the full box, after the L-BFGS stage; ``checkpoint.pt`` in runs
    that trained at the full box and predate it) and the canonical map from ``map.mrc``."""
    run, c = Path(run), SimpleNamespace(**meta["config"])
    d = int(meta["box_size"])
    model = FlexModel(d, float(meta["pixel_size"]), int(meta["n_images"]), c.zdim, c.mesh_cells, c.gen_layers,
                      c.gen_dim, torch.zeros(d, d, d), c.latent_noise, c.prior_weight, c.rigidity_weight,
                      c.smoothness_weight, getattr(c, "z_step", 1.0))
    saved = run / "flex_model.pt" if (run / "flex_model.pt").is_file() else run / "checkpoint.pt"
    model.load_state_dict(load_checkpoint(saved, map_location="cpu")["model"])
    canonical, _ = read_volume(run / "map.mrc")
    model.volume.density.data.copy_(torch.as_tensor(np.asarray(canonical)) / model.norm)
    return model.to(torch.device(device or "cpu")).eval()

"""cryoDRGN2 (Zhong et al. 2021, ICCV; cryoDRGN's ``abinit_homo_old`` / ``abinit_het_old``): ab initio
reconstruction with a neural volume and frequency-marching hierarchical pose search.

Composition: the cryoDRGN model (:class:`~cryolens.methods.cryodrgn.CryoDRGN`, homogeneous or with the
encoder for ``z``) whose poses are per-image buffers instead of known metadata, trained by the one
engine; at the start of epoch ``pretrain_epochs`` and every ``search_every`` epochs after it, the poses of
all images are replaced by :func:`~cryolens.inference.pose_search.hierarchical_search` against the current
volume (SO(3) grid level ``base_level`` = 4,608 rotations × a shift grid, ``n_levels`` refinements keeping
``keep`` poses, the last keeping 1). The first ``pretrain_epochs`` train the volume on uniformly random
poses (cryoDRGN2's pre-training on random poses). Frequency marching: the search's top shell rises
linearly from ``kmax_start`` (default D/4) to ``kmax_end`` (default D/2) over ``kmax_epochs`` epochs, and
within one search from ``max(4, D/8)`` up to it across levels
(:func:`~cryolens.inference.pose_search.frequency_schedule`). A last search follows the last epoch, so
the poses written match the final map.

One deliberate difference: the search scores slices of the neural volume *rendered once to a voxel
grid* (2× oversampled, trilinear) rather than evaluating the MLP at every candidate pose — the same
function up to interpolation, and on a CPU thousands of times cheaper. The heterogeneous variant
(``heterogeneous=true``) searches against the map at the mean ``z`` of the current latents (cryoDRGN2
evaluates each image's own ``z``).

Outputs as :mod:`~cryolens.methods.cryodrgn`, plus ``poses.star`` (the particles with the estimated
rotations and shifts) and ``poses.npz`` (``rotations (N, 3, 3)``, ``shifts (N, 2)`` px).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.fft import fft2_centered
from ..imaging.rotations import random_rotations
from ..imaging.slice import prepare_volume_ft
from ..inference.distributed import broadcast_module, is_main
from ..inference.engine import Trainer
from ..inference.pose_search import frequency_schedule, hierarchical_search
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from . import cryodrgn

DEFAULTS = {
    **{k: v for k, v in cryodrgn.DEFAULTS.items() if k not in ("batch_size", "dec_dim", "epochs")},
    "dec_dim": 256, "batch_size": 16, "epochs": 30, "heterogeneous": False,
    "pretrain_epochs": 1, "search_every": 5, "base_level": 2, "n_levels": 4, "keep": 8,
    "kmax_start": 0, "kmax_end": 0, "kmax_epochs": 25, "max_shift": 10.0, "shift_step": 1.5,
    "search_batch": 64, "final_search": True,
}


def attach_pose_buffers(model: torch.nn.Module, n_images: int, seed: int = 0) -> None:
    """Give ``model`` per-image pose buffers ``pose_rotations (N, 3, 3)`` (uniformly random, seeded) and
    ``pose_shifts (N, 2)`` px (zero); saved and restored with its state dict."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    model.register_buffer("pose_rotations", random_rotations(n_images, generator=g))
    model.register_buffer("pose_shifts", torch.zeros(n_images, 2))


class CryoDRGN2(cryodrgn.CryoDRGN):
    """cryoDRGN with poses as buffers replaced by a pose search between epochs (module docstring)."""

    def __init__(self, box_size: int, pixel_size: float, n_images: int, config: dict, mode: str,
                 particles: Particles, progress: bool = True):
        super().__init__(box_size, pixel_size, n_images, config, mode)
        attach_pose_buffers(self, n_images, int(config["seed"]))
        self.cfg2 = dict(config)
        self.particles = particles
        self.progress = progress
        self.searches: list[dict] = []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        idx = batch["index"]
        return super().forward({**batch, "rotation": self.pose_rotations[idx], "shift": self.pose_shifts[idx]})

    def posterior(self, batch: dict, hartley: torch.Tensor | None = None):
        if hartley is None:  # the encoder centres each image with its current shift
            batch = {**batch, "shift": self.pose_shifts[batch["index"]]}
        return super().posterior(batch, hartley)

    def kmax(self, epoch: int) -> int:
        """The search's top shell at ``epoch`` (0-based): linear from ``kmax_start`` to ``kmax_end``."""
        d = self.field.box_size
        k0 = int(self.cfg2["kmax_start"]) or d // 4
        k1 = int(self.cfg2["kmax_end"]) or d // 2
        frac = min(1.0, epoch / max(int(self.cfg2["kmax_epochs"]), 1))
        return int(round(k0 + (k1 - k0) * frac))

    def on_epoch_start(self, epoch: int, trainer: Trainer) -> None:
        p, every = int(self.cfg2["pretrain_epochs"]), max(int(self.cfg2["search_every"]), 1)
        if epoch >= p and (epoch - p) % every == 0:
            self.search(epoch, trainer.device)

    @torch.no_grad()
    def search(self, epoch: int, device) -> None:
        """Replace every image's pose by the hierarchical search against the current map (rank 0; the
        result is broadcast to the other DDP ranks)."""
        if is_main():
            self._search(epoch, torch.device(device))
        broadcast_module(self)

    def _search(self, epoch: int, device: torch.device) -> None:
        cfg, parts = self.cfg2, self.particles
        was = self.training
        self.eval()
        z = None
        if self.zdim:
            lat = cryodrgn.infer_latents(self, parts, device)
            z = torch.as_tensor(lat.mean(0, keepdims=True), device=device)
        vol = self.field.render(z)[0].to(device)
        vft = prepare_volume_ft(vol, pad=2)
        d = parts.box_size
        k = self.kmax(epoch)
        n_levels = int(cfg["n_levels"])
        ks = frequency_schedule(d, n_levels, None, k)
        bar = tqdm(total=len(parts), desc=f"pose search (k ≤ {k})", unit="img", disable=not self.progress,
                   leave=False)
        old = self.pose_rotations.clone()
        for idx, images in iterate_batches(parts, int(cfg["search_batch"])):
            it = torch.as_tensor(idx)
            ctf = None if parts.ctf is None else parts.ctf[it].to(device)
            res = hierarchical_search(fft2_centered(images.to(device)), vft, ctf=ctf, pixel_size=parts.pixel_size,
                                      base_level=int(cfg["base_level"]), n_levels=n_levels,
                                      max_shift=float(cfg["max_shift"]), shift_step=float(cfg["shift_step"]),
                                      keep=int(cfg["keep"]), k_max=ks)
            self.pose_rotations[it.to(self.pose_rotations.device)] = res.rotations.to(self.pose_rotations)
            self.pose_shifts[it.to(self.pose_shifts.device)] = res.shifts.to(self.pose_shifts)
            bar.update(len(idx))
        bar.close()
        from ..imaging.rotations import geodesic_distance
        moved = torch.rad2deg(geodesic_distance(old, self.pose_rotations)).median()
        self.searches.append({"epoch": epoch, "k_max": k, "median_pose_change_deg": float(moved)})
        self.train(was)


def fit(particles: Particles, known, run, config: dict, device=None, progress: bool = True):
    """Registry entry point of ``cryodrgn2``: ab initio, poses unknown (``heterogeneous`` adds ``z``)."""
    from ..io.star import write_star
    from .registry import MethodOutputs

    if particles.ctf is None:
        raise InputError(f"{particles.name}: cryodrgn2 needs CTF parameters")
    device = torch.device(device or "cpu")
    mode = "vae" if config.get("heterogeneous") else "homo"
    torch.manual_seed(int(config["seed"]))
    # the model never sees the metadata's poses: they are stripped here
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = CryoDRGN2(particles.box_size, particles.pixel_size, len(particles), config, mode, blind, progress)
    model.set_norm(cryodrgn.hartley_std(blind, int(config["norm_images"]), int(config["seed"])))
    if is_main():
        cryodrgn.write_model_json(run, model, particles, config, "cryodrgn2")
    trainer = Trainer(model, blind, cryodrgn.train_config(config), run.root, device, progress)
    trainer.fit(resume=bool(config.get("resume")))
    if config.get("final_search", True):
        model.search(int(config["epochs"]), device)
        trainer.save()
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    out = cryodrgn.finish(model, blind, run, config, device, trainer)
    rot, sh = model.pose_rotations.cpu(), model.pose_shifts.cpu()
    np.savez(run.path("poses.npz"), rotations=rot.numpy(), shifts=sh.numpy())
    write_star(run.path("poses.star"), dataclasses.replace(particles, rotations=rot, shifts=sh))
    out.rotations, out.shifts = rot, sh
    out.metrics["pose_searches"] = model.searches
    return out

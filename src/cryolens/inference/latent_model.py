"""cryoDRGN's model (Zhong et al. 2021): a neural volume ``V_θ(k, z)`` trained on images with known (or
searched) poses and CTFs, with ``z`` inferred per image by

- ``vae``: an amortized encoder ``q(z | image)`` and a β-weighted KL to ``N(0, I)`` (``train_vae``);
- ``homo``: no ``z`` at all (``train_nn``);
- ``autodecoder``: one free ``z`` per image, MSE only (``train_dec``: a modal estimate);
- ``variational-autodecoder``: a mean and log-variance per image with the KL (review C.4.2).

Composition: :class:`~cryolens.volumes.neural.NeuralField` × (:mod:`~cryolens.inference.encoders`) ×
the Hartley likelihood and KL of :mod:`~cryolens.inference.losses`. Loss per batch:
``mean MSE + β · mean KL / P`` with ``P`` the number of lattice pixels (cryoDRGN's scaling), ``β = 1/zdim``
by default. A run folder loads back with :func:`load_trained` (``model.json`` + ``checkpoint.pt``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..io.particles import Particles
from ..volumes.lattice import SliceLattice
from ..volumes.neural import NeuralField
from .encoders import CNNEncoder, LatentTable, MLPEncoder
from .engine import ParticleBatches, to_device
from .losses import centered_hartley, ctf_on_lattice, image_mse, kl_standard_normal, reparametrize

MODES = ("vae", "homo", "autodecoder", "variational-autodecoder")


class CryoDRGN(nn.Module):
    """The trainable model: a neural field, and an encoder / latent table by ``mode`` (module docstring).
    ``forward(batch) → {"loss", "mse", "kl"}`` (the engine's contract). ``config``: the recipe's options
    (attributes ``zdim``, ``dec_layers``, ``dec_dim``, ``pe``, ``pe_dim``, ``feat_sigma``, ``domain``,
    ``seed``, and by mode ``beta``, ``z_lr``, ``encoder``, ``enc_layers``, ``enc_dim``)."""

    def __init__(self, box_size: int, pixel_size: float, n_images: int, config: Any, mode: str = "vae"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.pixel_size = mode, float(pixel_size)
        zdim = 0 if mode == "homo" else int(config.zdim)
        if mode != "homo" and zdim < 1:
            raise InputError(f"zdim {zdim}: a heterogeneous model needs zdim >= 1")
        self.zdim = zdim
        beta = getattr(config, "beta", None)
        self.beta = float(beta) if beta is not None else (1.0 / zdim if zdim else 0.0)
        self.lattice = SliceLattice(box_size)
        self.field = NeuralField(box_size, zdim, int(config.dec_layers), int(config.dec_dim), config.pe,
                                 int(config.pe_dim) or None, float(config.feat_sigma), config.domain,
                                 seed=int(config.seed))
        self.encoder = None
        self.table = None
        if mode == "vae":
            if config.encoder == "mlp":
                self.encoder = MLPEncoder(self.lattice, zdim, int(config.enc_layers), int(config.enc_dim))
            elif config.encoder == "cnn":
                self.encoder = CNNEncoder(box_size, zdim)
            else:
                raise InputError(f"encoder {config.encoder!r}: expected mlp or cnn")
        elif mode in ("autodecoder", "variational-autodecoder"):
            self.table = LatentTable(n_images, zdim, variational=mode == "variational-autodecoder",
                                     seed=int(config.seed))
        self.z_lr = float(getattr(config, "z_lr", 1e-2))
        self.register_buffer("norm", torch.ones(()))

    def _lattice(self, device) -> SliceLattice:
        if self.lattice.pixels.device != device:
            self.lattice.to(device)
        return self.lattice

    def set_norm(self, value: float) -> None:
        """Images are divided by ``value`` (the Hartley std); maps are rendered in image units."""
        self.norm.fill_(float(value))
        self.field.output_scale.fill_(float(value))

    def param_groups(self) -> list[dict]:
        groups = [{"params": [p for n, p in self.named_parameters() if not n.startswith("table.")]}]
        if self.table is not None:
            groups.append({"params": list(self.table.parameters()), "lr": self.z_lr})
        return groups

    def targets(self, batch: dict) -> torch.Tensor:
        """Centred, normalised Hartley images ``(B, D, D)`` of a batch."""
        return centered_hartley(batch["image"], batch.get("shift")) / self.norm

    def posterior(self, batch: dict,
                  hartley: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(μ, logvar)`` of ``z`` for a batch (``None`` where the mode has none)."""
        if self.encoder is not None:
            lat = self._lattice(batch["image"].device)
            h = self.targets(batch) if hartley is None else hartley
            return self.encoder(lat.scatter(lat.gather(h)))
        if self.table is not None:
            return self.table(batch["index"])
        return None, None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        lat = self._lattice(batch["image"].device)
        h = self.targets(batch)
        target = lat.gather(h)
        mu, logvar = self.posterior(batch, h)
        z = mu
        if logvar is not None and self.training:
            z = reparametrize(mu, logvar)
        pred = self.field.slices(batch["rotation"], z, lat)
        if "ctf" in batch:
            pred = pred * ctf_on_lattice(batch["ctf"], lat, self.pixel_size)
        mse = image_mse(pred, target).mean()
        kl = kl_standard_normal(mu, logvar).mean() if logvar is not None else torch.zeros((), device=mse.device)
        return {"loss": mse + self.beta * kl / len(lat), "mse": mse, "kl": kl}


@torch.no_grad()
def infer_latents(model: CryoDRGN, particles: Particles, device, batch_size: int = 256,
                  fill: Callable[[dict], dict] | None = None) -> np.ndarray | None:
    """``(N, zdim)`` float32 posterior means of ``z`` in particle (STAR) order; ``None`` if homogeneous.
    ``fill``: gives each batch the values of hidden variables inferred elsewhere (e.g. searched shifts,
    :meth:`~cryolens.inference.online_search.PoseSearch.assign`)."""
    if model.zdim == 0:
        return None
    if model.table is not None:
        return model.table.mu.detach().cpu().numpy().astype(np.float32)
    was = model.training
    model.eval()
    data = ParticleBatches(particles)
    out = []
    for s in range(0, len(particles), batch_size):
        batch = to_device(data[list(range(s, min(s + batch_size, len(particles))))], device)
        if fill is not None:
            batch = fill(batch)
        out.append(model.posterior(batch)[0].float().cpu())
    model.train(was)
    return torch.cat(out).numpy().astype(np.float32)


def mean_latent(model: CryoDRGN, particles: Particles, device, fill=None) -> torch.Tensor | None:
    """``(1, zdim)`` mean of the current latents on ``device`` (``None`` when homogeneous)."""
    if not model.zdim:
        return None
    z = infer_latents(model, particles, device, fill=fill)
    return torch.as_tensor(z.mean(0, keepdims=True), device=device)


def build_model(box_size: int, pixel_size: float, n_images: int, config: Any, mode: str) -> CryoDRGN:
    """A fresh :class:`CryoDRGN` (the seed of ``config`` fixes the initial weights)."""
    torch.manual_seed(int(config.seed))
    return CryoDRGN(box_size, pixel_size, n_images, config, mode)


@dataclass
class TrainedModel:
    """A trained run, ready to decode. decode: ``z (B, L) float32 → (B, D, D, D)`` float32 real-space maps
    (``None``-z for a homogeneous run → ``(1, D, D, D)``). latents: the run's ``z.npy`` ``(N, L)`` (STAR
    order) or ``None``. pixel_size: Å/px. box_size: ``D``. config: the recipe config it was trained with
    (plus ``recipe`` and ``mode``). model: the module itself. decode_models: ``z (B, L) → B`` atomic models, for
    a run built from one (else None)."""

    decode: Callable[[torch.Tensor | None], torch.Tensor]
    latents: np.ndarray | None
    pixel_size: float
    box_size: int
    config: dict
    model: nn.Module
    decode_models: Callable[[torch.Tensor], list] | None = None


def load_trained(run_dir: str | Path, device: torch.device | str | None = None,
                 defaults: dict | None = None) -> TrainedModel:
    """Load a cryoDRGN-family run folder (``model.json`` + ``checkpoint.pt``; ``z.npy`` when present);
    ``defaults``: options a run's ``model.json`` may lack. A folder that is not one is an
    :class:`~cryolens.errors.InputError` naming it."""
    from ..io.checkpoint import load_checkpoint

    run = Path(run_dir)
    meta_path = run / "model.json"
    if not meta_path.is_file():
        raise InputError(f"{run}: not a trained cryoDRGN-family run (no model.json)")
    meta = json.loads(meta_path.read_text())
    dev = torch.device(device or "cpu")
    z = np.load(run / "z.npy") if (run / "z.npy").is_file() else None
    if meta.get("recipe") == "3dflex":  # a deformed canonical map (inference/flex.py), decoded by its flows
        from .flex import load_flex_model

        flex = load_flex_model(run, meta, dev)
        return TrainedModel(decode=flex.decode, latents=z, pixel_size=float(meta["pixel_size"]),
                            box_size=int(meta["box_size"]), config={**meta["config"], "recipe": "3dflex",
                                                                    "mode": "3dflex"}, model=flex)
    cfg = {**(defaults or {}), **meta["config"]}
    model = CryoDRGN(int(meta["box_size"]), float(meta["pixel_size"]), int(meta["n_images"]),
                     SimpleNamespace(**cfg), meta["mode"])
    state = load_checkpoint(run / "checkpoint.pt", map_location=dev)["model"]
    # runs of cryodrgn2 before its pose search became an inference strategy kept the poses in the model
    state = {k: v for k, v in state.items() if k not in ("pose_rotations", "pose_shifts")}
    model.load_state_dict(state)
    model.to(dev).eval()
    field = model.field

    def decode(zb: torch.Tensor | None) -> torch.Tensor:
        if zb is not None and model.zdim == 0:
            zb = None
        if zb is None and model.zdim:
            raise ValueError(f"{run}: this model needs z of dimension {model.zdim}")
        return field.render(None if zb is None else zb.to(dev).float())

    return TrainedModel(decode=decode, latents=z, pixel_size=float(meta["pixel_size"]),
                        box_size=int(meta["box_size"]), config={**cfg, "recipe": meta.get("recipe"),
                                                                 "mode": meta["mode"]}, model=model)

"""cryoDRGN (Zhong et al. 2021, Nat. Methods; public code 4.3): a neural volume ``V_θ(k, z)`` trained
on images with known poses and CTFs, with ``z`` inferred per image by an amortized encoder (``cryodrgn``,
``train_vae``), not at all (``cryodrgn-homo``, ``train_nn``) or one free ``z`` per image
(``cryodrgn-autodecoder``, ``train_dec``; ``variational``: a mean and log-variance per image).

Composition: :class:`~cryolens.inference.latent_model.CryoDRGN` (a
:class:`~cryolens.volumes.neural.NeuralField` × an encoder or latent table × the Hartley likelihood and
KL), trained by the one engine (:mod:`~cryolens.methods.training`). Loss per batch:
``mean MSE + β · mean KL / P`` with ``P`` the number of lattice pixels (cryoDRGN's scaling), ``β = 1/zdim``
by default. Images are normalised by the std of their Hartley transforms (measured on up to
``norm_images`` images), as cryoDRGN does.

Outputs: the map at the mean of ``z`` (or the one map of a homogeneous run), ``z`` per image (posterior
means, STAR order) and ``decode``. Run state written while it trains: ``checkpoint.pt`` (resumable),
``log.jsonl`` and ``model.json`` (what :func:`load_trained` needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import InputError
from ..inference.distributed import is_main
from ..inference.latent_model import TrainedModel, build_model
from ..inference.latent_model import load_trained as _load_trained
from ..inference.training import hartley_std
from ..io.particles import Particles
from .config import as_dict, option
from .registry import MethodOutputs
from .training import TrainingConfig, latent_outputs, train, write_model_json


@dataclass(frozen=True)
class CryoDRGNHomoConfig(TrainingConfig):
    """Options of cryodrgn-homo (cryoDRGN 4.3 ``train_nn`` defaults)."""

    dec_layers: int = option(3, "residual blocks of the decoder MLP")
    dec_dim: int = option(1024, "width of the decoder MLP")
    pe: Literal["gaussian", "geometric"] = option("gaussian", "positional encoding of the frequencies")
    pe_dim: int = option(0, "wavenumbers per axis of the encoding (0 = D/2)")
    feat_sigma: float = option(0.5, "scale of the Gaussian features, in units of D/2")
    domain: Literal["fourier", "hartley"] = option("fourier", "decoder output: (Re F, Im F) or Hartley")


@dataclass(frozen=True)
class LatentConfig(CryoDRGNHomoConfig):
    """Options of a cryoDRGN model with a latent ``z``."""

    zdim: int = option(8, "dimension of the latent z")
    beta: float | None = option(None, "weight of the KL term (none: 1/zdim)")
    z_lr: float = option(1e-2, "learning rate of the per-image latents (autodecoder)")


@dataclass(frozen=True)
class CryoDRGNConfig(LatentConfig):
    """Options of cryodrgn (cryoDRGN 4.3 ``train_vae`` defaults)."""

    enc_layers: int = option(3, "residual blocks of the encoder MLP")
    enc_dim: int = option(1024, "width of the encoder MLP")
    encoder: Literal["mlp", "cnn"] = option("mlp", "image encoder q(z | image)")


@dataclass(frozen=True)
class AutodecoderConfig(LatentConfig):
    """Options of cryodrgn-autodecoder (cryoDRGN 4.3 ``train_dec``)."""

    variational: bool = option(False, "a mean and a log-variance per image, with the KL")


def fit_mode(particles: Particles, known, run, config: CryoDRGNHomoConfig, device, progress: bool, mode: str,
             recipe: str) -> MethodOutputs:
    """Train one cryoDRGN variant (module docstring)."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: {recipe} needs poses (rlnAngleRot/Tilt/Psi)")
    device = torch.device(device or "cpu")
    model = build_model(particles.box_size, particles.pixel_size, len(particles), config, mode)
    model.set_norm(hartley_std(particles, config.norm_images, config.seed))
    if is_main():
        write_model_json(run, model, particles, config, recipe)
    train(model, particles, run, config, device, progress)
    if not is_main():  # the other DDP ranks return nothing
        return MethodOutputs(pixel_size=particles.pixel_size)
    return latent_outputs(model, particles, run, config, device)


def fit(particles, known, run, config: CryoDRGNConfig, device=None, progress=True):
    """Registry entry point of ``cryodrgn`` (VAE on z)."""
    return fit_mode(particles, known, run, config, device, progress, "vae", "cryodrgn")


def fit_homo(particles, known, run, config: CryoDRGNHomoConfig, device=None, progress=True):
    """Registry entry point of ``cryodrgn-homo`` (neural volume, no z)."""
    return fit_mode(particles, known, run, config, device, progress, "homo", "cryodrgn-homo")


def fit_autodecoder(particles, known, run, config: AutodecoderConfig, device=None, progress=True):
    """Registry entry point of ``cryodrgn-autodecoder`` (``variational``: mean + variance per image)."""
    mode = "variational-autodecoder" if config.variational else "autodecoder"
    return fit_mode(particles, known, run, config, device, progress, mode, "cryodrgn-autodecoder")


def load_trained(run_dir: str | Path, device: torch.device | str | None = None) -> TrainedModel:
    """Load a cryoDRGN-family run folder (:func:`~cryolens.inference.latent_model.load_trained`; options
    its ``model.json`` lacks take cryodrgn's defaults)."""
    return _load_trained(run_dir, device, as_dict(CryoDRGNConfig()))


"""AtomVAE (Rosenbaum et al. 2021, "Inferring a continuous distribution of atom coordinates from cryo-EM
images using VAEs", arXiv 2106.14108): a base atomic model (``model``), one Gaussian per atom of fixed width,
moved by a decoder of ``z``; encoders give ``z`` *and* the pose of every image (poses **not** given); a
pose-only warm-up, then joint training. CTFs known.

Composition: the mixture and restraints of :func:`~cryolens.methods.cryofold.atomic_mixture` (per atom: bond
lengths of the base model's covalent bonds and an L2 pull) × :class:`~cryolens.inference.atomvae.AtomVAEModel`
(cryoAI's pose encoder, cryoDRGN's ``z`` encoder, Gaussian likelihood, β-KL), trained by the one engine. The
paper's importance-weighted ELBO and its pose posterior family are not reproduced: the pose is a point
estimate of the encoder and the ELBO has one sample (docs/METHODS.md "AtomVAE").

Outputs: the map at the mean ``z``, ``z`` and the encoder's poses per image, ``decode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..inference.atomvae import AtomVAEModel, encoder_poses
from ..inference.distributed import is_main
from ..inference.latent_model import infer_latents
from ..inference.pose_encoder import PoseEncoder
from ..io.particles import Particles
from .config import option
from .cryofold import CryoFoldConfig, atomic_mixture, first_images
from .mixture_run import write_mixture_json
from .registry import MethodOutputs
from .training import run_summary, train


@dataclass(frozen=True)
class AtomVAEConfig(CryoFoldConfig):
    """Options of atomvae (our choices where the paper is silent, docs/METHODS.md)."""

    per: Literal["atom", "residue"] = option("atom", "one Gaussian per atom (the paper) or per residue")
    warmup_epochs: int = option(5, "epochs training the pose encoder alone against the base model")
    w_bond: float = option(1e-2, "weight of the bond-length term (per Å²)")
    w_ca: float = option(0.0, "weight of the consecutive-Cα 3.8 Å term (per Å²)")
    pose_channels: int = option(16, "channels of the pose encoder's first block")
    pose_max_channels: int = option(128, "channel cap of the pose encoder")
    max_shift_px: float = option(0.0, "largest shift the pose encoder gives, px (0: no shift head)")


def fit(particles: Particles, known, run, config: AtomVAEConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``atomvae`` (module docstring); any poses in ``particles`` are ignored."""
    device = torch.device(device or "cpu")
    torch.manual_seed(config.seed)
    volume, restraints = atomic_mixture(particles, config, device, per=config.per)
    pose = PoseEncoder(particles.box_size, config.pose_channels, config.pose_max_channels,
                       max_shift=config.max_shift_px)
    model = AtomVAEModel(volume, restraints, pose, config.enc_layers, config.enc_dim, config.beta,
                         config.warmup_epochs).to(device)
    model.set_scale(first_images(particles, config.norm_images, device))
    if is_main():
        write_mixture_json(run, "atomvae", volume, len(particles), config)
    train(model, particles, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    model.eval()
    z = infer_latents(model, particles, device)
    rotations, shifts = encoder_poses(model, particles, device)
    summary, history = run_summary(run, config)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        return volume.render(zb.to(device))

    mean = torch.as_tensor(z.mean(0, keepdims=True), device=device)
    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_mse", "images_per_s")}
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume.render(mean)[0].cpu(), latents=z,
                         rotations=rotations, shifts=shifts, decode=decode, metrics=metrics, history=history,
                         decode_models=lambda zb: volume.atomic_models(zb.to(device)))

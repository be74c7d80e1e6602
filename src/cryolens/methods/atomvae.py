"""AtomVAE (Rosenbaum et al. 2021, "Inferring a continuous distribution of atom coordinates from cryo-EM
images using VAEs", arXiv 2106.14108): a base atomic model (``model``), one Gaussian per atom of fixed width,
moved by a decoder of ``z``; encoders give ``z`` *and* the pose of every image (poses **not** given); a
pose-only warm-up, then joint training. CTFs known.

Composition: the mixture and restraints of :func:`~cryolens.methods.cryofold.atomic_mixture` (per atom: bond
lengths of the base model's covalent bonds and an L2 pull) × :class:`~cryolens.inference.atomvae.AtomVAEModel`
(cryoAI's pose encoder, cryoDRGN's ``z`` encoder, Gaussian likelihood, β-KL), trained by the one engine. The
paper's importance-weighted ELBO and its pose posterior family are not reproduced: the pose is a point
estimate of the encoder and the ELBO has one sample (docs/METHODS.md "AtomVAE").

Outputs: the map at the mean ``z``, ``z`` and the poses per image (the encoder's, or with ``refine_poses`` the
search's against each ``z`` group's map, by default the moved atoms' map: ``refine_reference``), ``decode``; with
``frame_selection`` all of them in the frame where that part of the base model stays still (docs/METHODS.md
"AtomVAE", "The frame of the motion").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import torch

from ..errors import InputError
from ..inference.atomvae import AtomVAEModel, encoder_poses, hold_frame
from ..inference.distributed import is_main
from ..inference.latent_model import infer_latents
from ..inference.pose_encoder import PoseEncoder
from ..inference.pose_refine import pose_error_metrics, refine_poses_by_latent
from ..io.particles import Particles
from .amortized_pose import PoseRefineOptions
from .config import option
from .cryofold import CryoFoldConfig, atomic_mixture, first_images
from .mixture_run import write_mixture_json
from .registry import MethodOutputs
from .training import run_summary, train


@dataclass(frozen=True)
class AtomVAEConfig(PoseRefineOptions, CryoFoldConfig):
    """Options of atomvae (our choices where the paper is silent, docs/METHODS.md)."""

    per: Literal["atom", "residue"] = option("atom", "one Gaussian per atom (the paper) or per residue")
    warmup_epochs: int = option(5, "epochs training the pose encoder alone against the base model")
    w_bond: float = option(1e-2, "weight of the bond-length term (per Å²)")
    w_ca: float = option(0.0, "weight of the consecutive-Cα 3.8 Å term (per Å²)")
    pose_channels: int = option(16, "channels of the pose encoder's first block")
    pose_max_channels: int = option(128, "channel cap of the pose encoder")
    max_shift_px: float = option(0.0, "largest shift the pose encoder gives, px (0: no shift head)")
    pose_heads: int = option(8, "rotation hypotheses per image, winner-take-all (cryoAI's pose_heads)")
    symmetrized_loss: bool = option(True, "per-image loss the smaller of Y's and R_π Y's (cryoAI)")
    warmup_resolution: float = option(0.0, "resolution limit of the warm-up's image error, Å (0 = Nyquist)")
    pose_lowpass: float = option(0.0, "low-pass of the pose encoder's input, Å (0 = none)")
    frame_selection: str = option(
        "", "part of the base model held still in the outputs ('A', 'A:46-99', 'A,B:1-20'): decoded motion, models, "
        "maps and poses re-expressed in its frame ('': the decoder's)")
    refine_reference: Literal["atoms", "mixture"] = option(
        "atoms", "refine_poses against the base model's atoms moved to each group's z, one form-factor Gaussian "
        "per atom, or against the trained mixture's own map")
    refine_clusters: int = option(8, "refine_poses: each image searched against the map at the k-means centre "
                                  "of its z's group (1: at the mean z)")


def build(particles: Particles, config: AtomVAEConfig, device) -> AtomVAEModel:
    """The untrained model on ``device`` (the seed fixes the initial weights), its scales set on the first
    ``norm_images`` images (their poses, if any, unused)."""
    torch.manual_seed(config.seed)
    volume, restraints = atomic_mixture(particles, config, device, per=config.per)
    if config.frame_selection:  # checked before training, used after it
        held = volume.gaussians_of(config.frame_selection)  # InputError when nothing matches
        try:
            volume.set_frame(held).set_frame(None)
        except ValueError as err:  # a selection on a line fixes no frame
            raise InputError(f"{config.model}: frame_selection {config.frame_selection!r}: {err}") from None
    d, px = particles.box_size, particles.pixel_size
    pose = PoseEncoder(d, config.pose_channels, config.pose_max_channels, max_shift=config.max_shift_px,
                       lowpass=px / config.pose_lowpass if config.pose_lowpass > 0 else 0.0, heads=config.pose_heads)
    radius = d * px / config.warmup_resolution if config.warmup_resolution > 0 else 0.0
    model = AtomVAEModel(volume, restraints, pose, config.enc_layers, config.enc_dim, config.beta,
                         config.warmup_epochs, config.symmetrized_loss, radius).to(device)
    model.set_scale(first_images(particles, config.norm_images, device))
    return model


def fit(particles: Particles, known, run, config: AtomVAEConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``atomvae`` (module docstring); any poses in ``particles`` are ignored."""
    device = torch.device(device or "cpu")
    blind = dataclasses.replace(particles, rotations=None, shifts=None)  # the truth, if any, only scores
    model = build(blind, config, device)
    if is_main():
        write_mixture_json(run, "atomvae", model.volume, len(particles), config)
    train(model, blind, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    model.eval()
    volume = model.volume
    z = infer_latents(model, blind, device)
    rotations, shifts = encoder_poses(model, blind, device, torch.as_tensor(z) if model.joint else None)
    if config.frame_selection and model.joint:  # every later map, model and search in that frame
        rotations, shifts = hold_frame(volume, z, rotations, shifts, config.frame_selection)
    poses = {"encoder": rotations}
    mean = torch.as_tensor(z.mean(0, keepdims=True), device=device)
    if config.refine_poses:  # each image against the map at its z-group's centre, in the images' units
        settings = SimpleNamespace(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PoseRefineOptions)},
                                   max_shift=config.max_shift_px, pose_batch=256, seed=config.seed)

        def reference(zc: torch.Tensor) -> torch.Tensor:
            at = zc.to(device) if model.joint else None
            maps = volume.atom_maps(at) if config.refine_reference == "atoms" else volume.render(at)
            return maps * model.log_scale.exp()

        rotations, shifts = refine_poses_by_latent(reference, z, blind, settings, device,
                                                   config.refine_clusters if model.joint else 1)
        poses["refined"] = rotations
    summary, history = run_summary(run, config)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        return volume.render(zb.to(device))

    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_mse", "images_per_s")}
    metrics.update(pose_error_metrics(poses, particles.rotations))
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume.render(mean)[0].cpu(), latents=z,
                         rotations=rotations, shifts=shifts, decode=decode, metrics=metrics, history=history,
                         decode_models=lambda zb: volume.atomic_models(zb.to(device)))

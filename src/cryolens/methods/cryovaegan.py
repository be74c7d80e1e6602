"""CryoVAEGAN (Miolane, Poitevin, Li and Holmes 2020, CVPR workshops; code ninamiolane/vaetree): a 2D
VAE-GAN on particle images, no 3D map. The latent space is read afterwards for the in-plane angle and the
defocus.

Composition: :class:`~cryolens.inference.vaegan.VAEGAN` (CNN encoder to a Gaussian latent, image decoder
with a learned scale, a discriminator on real images versus reconstructions and prior decodes) on the one
engine; :func:`~cryolens.inference.vaegan.latent_readout` reads the latents: the in-plane angle as the
angle of the circle a spectral embedding of them holds (no labels used), a defocus coordinate along the
latent's linear defocus axis, cross-fitted to the dataset's defocus (the CTF metadata, known).

Values: the paper and code give the architecture's idea, not values we could check; ours: ``zdim`` 8,
β 1, the adversarial terms weighted 0.1, Adam 1e-3 with betas (0.5, 0.999) (the usual VAE-GAN values) for
the networks and the discriminator, batch 32, 20 epochs, CPU-sized networks. The Gaussian reconstruction
term with a learned log-variance replaces the authors' Bernoulli term (their images are in [0, 1]).

Outputs: ``z`` per image (posterior means, STAR order), the STAR columns ``rlnCryolensLatentAngle`` (°) and
``rlnCryolensDefocusCoordinate`` (Å), metrics ``defocus_spearman``, ``angle_circularity`` and, when the metadata
carries rotations (a simulation's truth, never used in training), ``inplane_circular_correlation`` of the
read-out angle with the true in-plane angle (relative to the first image's pose: one view).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..inference.distributed import is_main
from ..inference.training import sample_images
from ..inference.vaegan import VAEGAN, circular_correlation, encode_all, inplane_angles, latent_readout
from .config import option
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train


@dataclass(frozen=True)
class CryoVAEGANConfig(TrainingConfig):
    """Options of cryovaegan (module docstring)."""

    batch_size: int = option(32, "images per optimiser step")
    lr: float = option(1e-3, "learning rate of the networks' and the discriminator's Adam")
    betas: tuple[float, ...] = option((0.5, 0.999), "Adam betas")
    zdim: int = option(8, "dimension of the latent z")
    beta: float = option(1.0, "weight of the KL term")
    gan_weight: float = option(0.1, "weight of the adversarial terms of encoder and decoder")
    enc_channels: int = option(32, "channels of the encoder's first convolution")
    dec_channels: int = option(32, "feature maps of the decoder at D/4")
    hidden: int = option(256, "width of the encoder's and decoder's fully connected layers")
    critic_channels: int = option(16, "channels of the discriminator's first block")
    critic_max_channels: int = option(128, "most channels of a discriminator block")
    spectral_norm: bool = option(True, "spectrally normalise the discriminator's layers (a Lipschitz-1 "
                                 "discriminator: without it its logits can run away and wreck the decoder)")


def fit(particles, known, run, config: CryoVAEGANConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``cryovaegan`` (no poses; the CTF's defocus is read against the latent)."""
    if particles.ctf is None:
        raise InputError(f"{particles.name}: cryovaegan needs CTF parameters (its defocus read-out)")
    if config.zdim < 2:
        raise InputError(f"cryovaegan: zdim {config.zdim}: the angle read-out needs at least 2")
    device = torch.device(device or "cpu")
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    torch.manual_seed(config.seed)
    model = VAEGAN(particles.box_size, config, float(sample_images(blind, config.norm_images, config.seed).std()))
    train(model, blind, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    z = encode_all(model, blind, device)
    summary, history = run_summary(run, config)
    metrics, columns, _ = readouts(z, particles)
    return MethodOutputs(pixel_size=particles.pixel_size, latents=z, metrics={**summary, **metrics},
                         history=history, particle_columns=columns)


def readouts(z: np.ndarray, particles) -> tuple[dict[str, float], dict[str, np.ndarray], dict]:
    """The read-outs of latents ``z (N, L)`` of ``particles`` (``inference.vaegan.latent_readout`` with their
    defocus): metrics ``defocus_spearman``, ``angle_circularity`` and, when the particles carry rotations (a
    simulation's truth), ``inplane_circular_correlation``; STAR columns ``rlnCryolensLatentAngle`` (°) and
    ``rlnCryolensDefocusCoordinate`` (Å); and ``latent_readout``'s whole dict (its spectral ``angle_pair`` and
    ``angle_plane``, for a plot) with the particles' mean ``defocus (N,)`` Å."""
    if particles.ctf is None:
        raise InputError(f"{particles.name}: the cryovaegan read-outs need CTF parameters (the defocus)")
    defocus = (0.5 * (particles.ctf.defocus_u + particles.ctf.defocus_v)).numpy()
    read = {**latent_readout(z, defocus), "defocus": defocus}
    metrics = {"defocus_spearman": read["defocus_spearman"], "angle_circularity": read["angle_circularity"]}
    if particles.rotations is not None:
        truth = inplane_angles(particles.rotations)
        metrics["inplane_circular_correlation"] = circular_correlation(read["angle"], truth)
    columns = {"rlnCryolensLatentAngle": np.degrees(read["angle"]),
               "rlnCryolensDefocusCoordinate": read["defocus_coordinate"]}
    return metrics, columns, read

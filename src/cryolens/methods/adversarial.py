"""What the adversarial recipes (``cryogan``, ``multi-cryogan``) share (not a recipe itself): their common
options and the wiring — the data scale and noise level measured on the images, the simulator-in-the-loop
generator (:class:`~cryolens.inference.simulator.PhysicsGenerator`) around a recipe's volume model, the
critic, and WGAN-GP training on the one engine (:class:`~cryolens.inference.adversarial.AdversarialModel`).

Noise: white Gaussian with the σ of the pixels farther than ``background_radius`` px from the centre of a
sample of the real images (:func:`~cryolens.imaging.noise.background_sigma`), or, with ``noise_patches`` (an
``.mrcs`` of background patches cut from the micrographs, the particle box size), those patches added as
they are. The metadata's poses and shifts never reach the model (stripped here): only the CTF is used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..imaging.noise import background_sigma
from ..inference.adversarial import AdversarialModel, Critic
from ..inference.distributed import world
from ..inference.simulator import PhysicsGenerator
from ..inference.training import sample_images
from ..io.mrc import open_stack
from ..io.particles import Particles
from .config import option
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train


@dataclass(frozen=True)
class GANConfig(TrainingConfig):
    """Options of every adversarial recipe (CryoGAN's published values: docs/METHODS.md)."""

    batch_size: int = option(8, "fake images per generator step (the critic sees n_critic × as many real)")
    lr: float = option(1e-3, "learning rate of the generator's Adam")
    lr_decay: float = option(1.0, "factor of the generator's learning rate per epoch (1: constant)")
    critic_lr: float = option(1e-3, "learning rate of the critic's Adam")
    betas: tuple[float, ...] = option((0.5, 0.9), "Adam betas of generator and critic")
    n_critic: int = option(4, "critic steps per generator step")
    gp_weight: float = option(1.0, "weight of the gradient penalty (WGAN-GP)")
    gp_every: int = option(1, "gradient penalty on every k-th critic step only, weighted k× (1: every step)")
    blur_sigma: float = option(2.0, "σ of the Gaussian blur of real and fake images at the start, px")
    blur_decay: float = option(0.98, "factor of the blur σ per epoch")
    ema: float = option(0.0, "decay per generator step of the generator's moving average (0: off; the output)")
    critic_channels: int = option(16, "channels of the critic's first convolution block")
    critic_max_channels: int = option(128, "most channels of a critic block")
    max_shift: float = option(0.0, "fake shifts drawn uniformly in ±max_shift, px")
    background_radius: float | None = option(None, "noise σ from pixels beyond this radius, px (none: 0.4·D)")
    noise_patches: str | None = option(None, ".mrcs of background patches added as noise (none: white noise)")
    phase_flip: bool = option(False, "the critic sees real and fake images phase-flipped by their own CTFs' signs")
    learn_noise: bool = option(False, "train the white noise's σ with the map, from the background estimate")


def _noise_patches(path: str | None, box: int, norm: float) -> torch.Tensor | None:
    if path is None:
        return None
    patches = torch.from_numpy(open_stack(path).astype("float32"))
    if patches.shape[-1] != box:
        raise InputError(f"{path}: noise patches are {patches.shape[-1]} px, the particles {box} px")
    return patches / norm


def build_gan(volume: torch.nn.Module, particles: Particles, config: GANConfig, constrain=None) -> AdversarialModel:
    """The adversarial model of ``volume`` for ``particles`` (module docstring), seeded by ``config.seed``."""
    if particles.ctf is None:
        raise InputError(f"{particles.name}: adversarial recipes need CTF parameters")
    if world()[1] > 1:
        raise InputError(f"{particles.name}: adversarial recipes run in one process (no DDP)")
    sample = sample_images(particles, config.norm_images, config.seed)
    norm = float(sample.std())
    radius = 0.4 * particles.box_size if config.background_radius is None else config.background_radius
    sigma = background_sigma(sample, radius) / norm
    torch.manual_seed(config.seed)
    gen = PhysicsGenerator(volume, particles.pixel_size, particles.ctf, sigma,
                           _noise_patches(config.noise_patches, particles.box_size, norm), max_shift=config.max_shift,
                           learn_noise=config.learn_noise and config.noise_patches is None)
    critic = Critic(particles.box_size, config.critic_channels, config.critic_max_channels)
    model = AdversarialModel(gen, critic, config, norm, constrain)
    model.noise_sigma = sigma * norm
    return model


def train_gan(model: AdversarialModel, particles: Particles, run, config: GANConfig, device, progress: bool) -> dict:
    """Train on the one engine (resumable; the engine's batch holds ``n_critic × batch_size`` real images);
    returns ``{"metrics", "history"}`` from the run's log."""
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    engine = dataclasses.replace(config, batch_size=config.batch_size * config.n_critic)
    train(model, blind, run, engine, torch.device(device or "cpu"), progress)
    summary, history = run_summary(run, config)
    last = history[-1] if history else {}
    metrics = {**summary, "noise_sigma_background": model.noise_sigma,
               "noise_sigma": model.generator.noise_level() * float(model.norm), "data_scale": float(model.norm),
               "final_blur_sigma_px": model.sigma, "final_wasserstein_epoch": last.get("wasserstein")}
    return {"metrics": metrics, "history": history}


def outputs(particles: Particles, volume: torch.Tensor, trained: dict, **fields) -> MethodOutputs:
    """The :class:`MethodOutputs` of an adversarial run: ``volume`` ``(D, D, D)``, the training summary and
    per-epoch history (generator and critic losses, gradient penalty, Wasserstein estimate), ``fields``."""
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, metrics=trained["metrics"],
                         history=trained["history"], **fields)

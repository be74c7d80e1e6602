"""CryoGAN (Gupta, McCann, Donati and Unser 2021, IEEE Trans. Comput. Imaging 7:759): homogeneous
reconstruction with no per-image inference at all. The generator is the physics — a real-space voxel map
projected at rotations drawn uniformly on SO(3), shifted, CTF-modulated with CTFs drawn from the dataset's
own parameters, plus noise measured on the data (:mod:`~cryolens.inference.simulator`) — and a CNN critic
compares the simulated images with the real ones as populations (WGAN-GP,
:mod:`~cryolens.inference.adversarial`), on the one engine.

Composition: :class:`~cryolens.volumes.voxel.RealVoxelVolume` (zeros at the start) × the real-space forward
model (:class:`~cryolens.imaging.forward.ProjectorForward`) × the Wasserstein loss with gradient penalty;
positivity is a projection (negative voxels set to zero) before every step. Published values
(docs/METHODS.md): 4 critic steps per generator step, penalty weight 1, Adam lr 1e-3 with betas (0.5, 0.9),
batch 8, real and fake images blurred by a Gaussian of σ 2 px shrinking ×0.98 per epoch.

Deviations, where the paper is silent or CPU-bound: the critic is a small CNN (16 → 128 channels, a 3×3 and
a stride-2 4×4 convolution per block, LeakyReLU 0.2, no normalisation); every critic step sees fresh real
images (an epoch is one pass of the critic over the data); the noise is white Gaussian with the σ of the
images' background pixels unless background patches are given (``noise_patches``); shifts are off unless
``max_shift`` is set; 20 epochs by default. Off by default, as the paper has neither: ``phase_flip`` (the
critic sees real and fake images phase-flipped by their own CTFs) and ``lr_decay`` (the generator's learning
rate decays per epoch); both measured in docs/METHODS.md. Outputs: the map (up to a rotation and a mirror, like any ab
initio map), the per-epoch generator and critic losses, gradient penalty and Wasserstein estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inference.distributed import is_main
from ..volumes.voxel import RealVoxelVolume
from .adversarial import GANConfig, build_gan, outputs, train_gan
from .registry import MethodOutputs


@dataclass(frozen=True)
class CryoGANConfig(GANConfig):
    """Options of cryogan (:class:`~cryolens.methods.adversarial.GANConfig`: CryoGAN's published values)."""


def clamp_positive(volume: RealVoxelVolume) -> None:
    """Positivity: negative density voxels set to zero (in place, a projection)."""
    volume.density.clamp_(min=0)


def fit(particles, known, run, config: CryoGANConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``cryogan`` (no poses; CTF known)."""
    torch.manual_seed(config.seed)
    model = build_gan(RealVoxelVolume(particles.box_size), particles, config, constrain=clamp_positive)
    trained = train_gan(model, particles, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    model.use_average()
    volume = model.generator.volume.render()[0].clamp_min(0).cpu() * float(model.norm)
    return outputs(particles, volume, trained)

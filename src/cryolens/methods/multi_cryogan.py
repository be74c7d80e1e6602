"""Multi-CryoGAN (Gupta, Phan, Yoo and Unser 2020, ECCV): CryoGAN with a generator of maps,
``z ~ N(0, I) → V(z)``, so that images simulated over many maps are distributed like the real ones —
continuous heterogeneity with neither a pose nor a ``z`` inferred for any image.

Composition: :class:`~cryolens.volumes.decoder.VoxelDecoder` (our choice of generator, the paper does not
pin one down: a learned base grid plus a deformation decoded from ``z`` by an MLP and two up-sampling 3D
convolutions, a softplus for positivity) × the simulator-in-the-loop generator (one map per fake image, projected
by the Fourier-slice forward model at a rotation from the SO(3) prior, CTF drawn from the dataset, noise
measured on the data) × WGAN-GP against a CNN critic, on the one engine, with CryoGAN's published values
(:class:`~cryolens.methods.adversarial.GANConfig`). A small voxel decoder rather than a neural field: each
fake image needs a whole map, and a CNN decodes one in a single pass where a field is queried per voxel.

Outputs: ``n_samples`` maps drawn from the trained generator (the first ``save_samples`` written as
``samples/sample_NNN``), their ``n_states`` k-means centres (``volumes``, largest population first;
``populations`` in the metrics), the mean of the samples (``volume``) and ``decode`` (``z → maps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inference.distributed import is_main
from ..inference.populations import kmeans_maps, sample_maps
from ..volumes.decoder import VoxelDecoder
from .adversarial import GANConfig, build_gan, outputs, train_gan
from .config import option
from .registry import MethodOutputs


@dataclass(frozen=True)
class MultiCryoGANConfig(GANConfig):
    """Options of multi-cryogan: CryoGAN's values plus the map generator and the population read-out."""

    zdim: int = option(4, "dimension of the generator's z ~ N(0, I)")
    decoder_channels: int = option(16, "feature grids of the decoder at D/4")
    decoder_hidden: int = option(64, "width of the decoder's MLP")
    n_samples: int = option(1000, "maps sampled from the trained generator")
    n_states: int = option(2, "k-means centres of the sampled maps")
    save_samples: int = option(10, "sampled maps written as samples/sample_NNN.mrc")
    equal_mass: bool = option(False, "every generated map has the base map's mass (conformations, not compositions)")


def fit(particles, known, run, config: MultiCryoGANConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``multi-cryogan`` (no poses; CTF known)."""
    device = torch.device(device or "cpu")
    torch.manual_seed(config.seed)
    decoder = VoxelDecoder(particles.box_size, config.zdim, config.decoder_channels, config.decoder_hidden,
                           equal_mass=config.equal_mass)
    model = build_gan(decoder, particles, config)
    trained = train_gan(model, particles, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    model.use_average()
    scale = float(model.norm)
    pop = kmeans_maps(sample_maps(decoder, config.n_samples, config.seed, device, scale), config.n_states,
                      config.seed)
    trained["metrics"].update(populations=pop.populations.tolist(), n_samples=config.n_samples)
    saved = {f"samples/sample_{i:03d}": pop.samples[i] for i in range(min(config.save_samples, len(pop.samples)))}

    def decode(z: torch.Tensor) -> torch.Tensor:
        return decoder.render(z.to(device)).cpu() * scale

    return outputs(particles, pop.samples.mean(0), trained, volumes=pop.centres, decode=decode,
                   extra_volumes=saved)

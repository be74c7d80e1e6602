"""E2GMM (Chen & Ludtke 2021, Nat. Methods 18:930; EMAN2 ``e2gmm_refine_new.py``): continuous heterogeneity
as a Gaussian mixture whose centres and amplitudes move with a 4-dimensional ``z``; poses and CTFs known.

Composition: a neutral :class:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume` — reference-free, fitted
to a consensus map (``consensus``, or the back-projection of the particles when none is given;
:func:`~cryolens.volumes.gaussian_mixture.fit_to_map`), or reference-based, one Gaussian per residue of an
atomic model (``model``; :func:`~cryolens.volumes.gaussian_mixture.from_atoms`) — × E2GMM's decoder
(:class:`~cryolens.volumes.mixture_decoder.MixtureDecoder`) × its encoder on per-image gradients and its FRC
loss (:mod:`cryolens.inference.e2gmm`), trained by the one engine. Defaults are EMAN2's: ``zdim`` 4, 3 × 512
layers, dropout 0.3, Adam at 1e-4, batch 32, 10 epochs (``--niter``), the ring band from ``--minres`` 500 Å to
the box's Nyquist. Where EMAN2's code and the paper differ or are silent (docs/METHODS.md "E2GMM"): z noise
N(0, 0.1²) and the unit-ball penalty weight 10; the decoder starts at the neutral model exactly; the number
of Gaussians follows the consensus map (:func:`~cryolens.volumes.gaussian_mixture.gaussians_for_map`).

Outputs: the map at the mean ``z``, ``z`` per image and ``decode``. Run state: ``checkpoint.pt``, ``log.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError
from ..inference.distributed import is_main
from ..inference.e2gmm import E2GMMModel, GradientEncoder, gradient_features
from ..inference.frc import ring_band
from ..io.atomic import load_model_for_box
from ..io.mrc import read_volume
from ..io.particles import Particles
from ..volumes.gaussian_mixture import GaussianMixtureVolume, fit_to_map, from_atoms, gaussians_for_map
from ..volumes.mixture_decoder import MixtureDecoder
from .backprojection import backproject
from .config import option
from .mixture_run import write_mixture_json
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train


@dataclass(frozen=True)
class E2GMMConfig(TrainingConfig):
    """Options of e2gmm (EMAN2 ``e2gmm_refine_new.py --heter`` defaults)."""

    epochs: int = option(10, "passes over the data (EMAN2 --niter)")
    batch_size: int = option(32, "images per optimiser step (EMAN2 --batchsz)")
    lr: float = option(1e-4, "learning rate of Adam (EMAN2 heterogeneity training)")
    amp: bool = option(False, "mixed precision on CUDA (off: the FRC of bf16 projections is too coarse)")
    zdim: int = option(4, "dimension of the latent z (EMAN2 --nmid)")
    model: str | None = option(None, "atomic model (PDB/mmCIF) for a reference-based neutral mixture")
    per: Literal["residue", "atom"] = option("residue", "with a model: one Gaussian per residue or per atom")
    consensus: str | None = option(None, "consensus map (MRC) to fit; none: back-project the particles")
    n_gaussians: int = option(0, "Gaussians fitted to the consensus map (reference-free; EMAN2 --npts); 0: as "
                                 "many parameters as the map has voxels above 10 % of its maximum")
    fit_steps: int = option(400, "Adam steps of the fit of the neutral mixture to the consensus map")
    layers: int = option(3, "hidden layers of the encoder and of the decoder")
    hidden: int = option(512, "width of those layers (EMAN2 --ndense)")
    dropout: float = option(0.3, "dropout after the hidden layers")
    vary_amplitudes: bool = option(True, "the decoder moves amplitudes as well as centres (EMAN2 --pas 110)")
    z_noise: float = option(0.1, "std of the noise added to z in training")
    radius_weight: float = option(10.0, "weight of mean max(|z| - 1, 0)")
    low_res: float = option(500.0, "lowest resolution of the FRC band, Å (EMAN2 --minres)")
    high_res: float = option(0.0, "highest resolution of the FRC band, Å (0: Nyquist; EMAN2 --maxres)")
    grad_batch: int = option(64, "images per batch when computing the encoder's gradient inputs")


def neutral_mixture(particles: Particles, config: E2GMMConfig, device, progress: bool) -> GaussianMixtureVolume:
    """The neutral mixture (module docstring) on ``device``, its base parameters fixed."""
    d, px = particles.box_size, particles.pixel_size
    if config.n_gaussians < 0:
        raise InputError(f"e2gmm: n_gaussians must be >= 0 (0: sized from the map), not {config.n_gaussians}")
    if config.model:
        atoms = load_model_for_box(config.model, d, px)
        return from_atoms(atoms, d, px, per=config.per, learn=(), device=device)
    if config.consensus:
        volume, map_px = read_volume(config.consensus)
        if volume.shape != (d, d, d):
            raise InputError(f"{config.consensus}: map of shape {tuple(volume.shape)}, the particles are {d} px")
    else:
        volume = backproject(particles, device=device, seed=config.seed, progress=progress).volume
    volume = torch.as_tensor(volume)
    n = config.n_gaussians or gaussians_for_map(volume)
    return fit_to_map(volume, px, n, steps=config.fit_steps, seed=config.seed, device=device, learn=())


def build(particles: Particles, config: E2GMMConfig, device, progress: bool) -> E2GMMModel:
    """The untrained model with its encoder inputs computed (the seed fixes every initial weight)."""
    torch.manual_seed(config.seed)
    volume = neutral_mixture(particles, config, device, progress)
    decoder = MixtureDecoder(config.zdim, volume.n_gaussians, config.layers, config.hidden, config.dropout,
                             batchnorm=True, amplitudes=config.vary_amplitudes,
                             shift_scale=0.5 * particles.box_size * particles.pixel_size,
                             amplitude_scale=0.5 * float(volume.amplitudes.abs().max()))
    volume.attach_decoder(decoder.to(device), config.zdim)
    lo, hi = ring_band(particles.box_size, particles.pixel_size, config.low_res, config.high_res)
    features = gradient_features(volume, particles, [(lo, max(lo, hi // 2)), (lo, hi)], device, config.grad_batch)
    encoder = GradientEncoder(features.shape[1], config.zdim, config.layers, config.hidden, config.dropout)
    model = E2GMMModel(volume, encoder, (lo, hi), config.z_noise, config.radius_weight).to(device)
    model.set_features(features)
    return model


def fit(particles: Particles, known, run, config: E2GMMConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``e2gmm`` (module docstring)."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: e2gmm needs poses (rlnAngleRot/Tilt/Psi)")
    device = torch.device(device or "cpu")
    model = build(particles, config, device, progress)
    if is_main():
        write_mixture_json(run, "e2gmm", model.volume, len(particles), config)
    train(model, particles, run, config, device, progress)
    if not is_main():  # the other DDP ranks return nothing
        return MethodOutputs(pixel_size=particles.pixel_size)
    return mixture_outputs(model, particles, run, config, device)


def mixture_outputs(model: E2GMMModel, particles: Particles, run, config, device) -> MethodOutputs:
    """The trained model's outputs: ``z``, the map at their mean, ``decode`` and the run summary."""
    model.eval()
    z = model.latents()
    volume = model.volume
    mean = torch.as_tensor(z.mean(0, keepdims=True), device=device)
    summary, history = run_summary(run, config)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        return volume.render(zb.to(device))

    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_frc", "images_per_s")}
    models = None if volume.atoms is None else (lambda zb: volume.atomic_models(zb.to(device)))
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume.render(mean)[0].cpu(), latents=z,
                         decode=decode, metrics={**metrics, "n_gaussians": volume.n_gaussians}, history=history,
                         decode_models=models)

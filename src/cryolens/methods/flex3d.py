"""3DFlex (Punjani & Fleet 2023, Nat. Methods; bioRxiv 10.1101/2021.04.22.440893): a canonical real-space
density convected along a flow that an MLP computes from a per-image latent ``z``; poses and CTFs known.

Composition (docs/METHODS.md "3DFlex"): the consensus back-projection (:mod:`~cryolens.methods.backprojection`)
gives the starting canonical map and its two half maps; :class:`~cryolens.inference.flex.FlexModel`
(:class:`~cryolens.volumes.deformation.DeformedVolume` × an autodecoder with fixed latent noise × the
Gaussian likelihood, a Gaussian prior on ``z``, rigidity and smoothness) is trained on the one engine with the
canonical map low-passed to ``flow_lowpass_A`` and held fixed (stage 1: flow and latents); then, with the
flows held fixed, each half-set's canonical map is refined at full resolution by full-batch L-BFGS from that
half's back-projection (stage 2, :func:`~cryolens.inference.flex.refine_canonical`), which gives a
gold-standard half-map FSC and a windowed local resolution
(:func:`~cryolens.metrics.local_resolution.local_resolution`). The final canonical map is the mean of
the two halves. Where the defaults come from and where this departs from the paper: docs/METHODS.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..imaging.grids import lowpass_volume
from ..imaging.spectra import resize_volume
from ..inference.distributed import is_main, world
from ..inference.flex import (FlexModel, crop_particles, flexible_backprojection, noise_variance, refine_canonical,
                              rescale_flows)
from ..inference.training import sample_images
from ..io.checkpoint import save_checkpoint
from ..io.particles import Particles, half_set_labels
from ..metrics.fsc import fsc, resolution_at
from ..metrics.local_resolution import local_resolution
from .backprojection import backproject
from .config import as_dict, option
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train


@dataclass(frozen=True)
class Flex3DConfig(TrainingConfig):
    """Options of 3dflex (docs/METHODS.md "3DFlex": sources of the defaults)."""

    zdim: int = option(2, "dimension of the latent z")
    mesh_cells: int = option(20, "cells of the coarse flow mesh per box edge")
    gen_layers: int = option(6, "hidden layers of the flow generator MLP")
    gen_dim: int = option(64, "units per hidden layer of the flow generator")
    latent_noise: float = option(0.5, "std of the fixed noise added to each latent while training")
    prior_weight: float = option(1.0, "precision of the Gaussian prior on z (nats per unit z², per image)")
    rigidity_weight: float = option(10.0, "weight of the density-weighted rigidity term (nats per image)")
    smoothness_weight: float = option(1.0, "weight of the flow smoothness term (nats per px², per image)")
    flow_lowpass_A: float = option(10.0, "resolution (Å) the canonical map is low-passed to while the flow trains")
    z_step: float = option(1.0, "fraction of each image's Gauss-Newton step taken by its latent (1 = full step)")
    lbfgs_iterations: int = option(20, "L-BFGS iterations of the canonical map per half-set")
    ridge: float = option(1.0, "L2 penalty on the canonical map during L-BFGS, in units of 1/τ² (τ² the voxel "
                                "variance of the half's back-projection: a white Gaussian prior of that variance)")
    local_radius: float = option(6.0, "radius (px) of the local-resolution window")
    local_step: int = option(4, "spacing (px) of the local-resolution centres")
    flex_groups: int = option(16, "groups of latents (k-means) whose back-projections, pulled back along their "
                                  "flows, start the L-BFGS stage; 0 = start from the half's consensus back-projection")
    train_box: int = option(0, "box (px, even) the images are Fourier-cropped to while the flow trains (stage 1); "
                               "0 = the full box; the flexible reconstruction is always at the full box")
    batch_size: int = option(32, "images per optimiser step, over all DDP processes")
    lr: float = option(1e-3, "learning rate of Adam / AdamW (flow generator)")


def fit(particles: Particles, known, run, config: Flex3DConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``3dflex`` (module docstring)."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: 3dflex needs poses (rlnAngleRot/Tilt/Psi)")
    if config.mesh_cells < 1 or config.zdim < 1:
        raise InputError(f"3dflex: mesh_cells ({config.mesh_cells}) and zdim ({config.zdim}) must be >= 1")
    device = torch.device(device or "cpu")
    torch.manual_seed(config.seed)
    bp = backproject(particles, device=device, seed=config.seed, progress=progress)
    d = config.train_box if 0 < config.train_box < particles.box_size else particles.box_size
    if d % 2:
        raise InputError(f"3dflex: train_box ({d}) must be even")
    cropped = run.path(f"train_particles_{world()[0]}.mrcs")  # stage 1's images when train_box is set
    small = particles if d == particles.box_size else crop_particles(particles, d, cropped)
    model = _flex_model(small, resize_volume(bp.volume, d), config, device)
    if is_main():  # what inference.latent_model.load_trained needs to decode the run (eval-vol, analyze)
        run.write_json("model.json", {"recipe": "3dflex", "mode": "3dflex", "box_size": particles.box_size,
                                      "pixel_size": particles.pixel_size, "n_images": len(particles),
                                      "config": as_dict(config)})
    train(model, small, run, config, device, progress)
    cropped.unlink(missing_ok=True)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    if small is not particles:  # the same flows on the full box (stage 2 and decoding)
        full = _flex_model(particles, bp.volume, config, device)
        rescale_flows(model, full)
        model = full
    model.eval()
    halves, seconds = flexible_reconstruction(model, particles, bp, config, device)
    canonical, scale = 0.5 * (halves[0] + halves[1]), float(model.norm)
    model.volume.density.data.copy_(canonical.to(device) / scale)
    save_checkpoint(run.path("flex_model.pt"), {"model": model.state_dict()})
    curve = fsc(halves[0], halves[1])
    res = resolution_at(curve, 0.143, particles.pixel_size, particles.box_size)
    local = local_resolution(halves[0], halves[1], particles.pixel_size, config.local_radius, config.local_step)
    summary, history = run_summary(run, config)
    metrics = {**summary, "resolution_halfmap_0143_A": res, "fsc_halfmaps": np.asarray(curve).tolist(),
               "consensus_resolution_halfmap_0143_A": bp.resolution,
               "noise_variance_scaled": float(model.sigma2), "flexible_reconstruction_s": seconds}
    return MethodOutputs(pixel_size=particles.pixel_size, volume=canonical, half_maps=(halves[0], halves[1]),
                         latents=model.table.mu.detach().cpu().numpy().astype(np.float32),
                         decode=model.decode, half_labels=half_set_labels(particles, config.seed), metrics=metrics,
                         history=history,
                         extra_volumes={"consensus": bp.volume, "local_resolution": local})


def _flex_model(particles: Particles, volume: torch.Tensor, config: Flex3DConfig, device) -> FlexModel:
    """The stage-1 :class:`FlexModel` on ``particles``' box: canonical map ``volume (D, D, D)`` (image units)
    low-passed to ``flow_lowpass_A`` and frozen, image scale and noise σ² measured on the images."""
    scale = float(sample_images(particles, config.norm_images, config.seed).std())
    start = lowpass_volume(volume, config.flow_lowpass_A, particles.pixel_size) / scale
    model = FlexModel(particles.box_size, particles.pixel_size, len(particles), config.zdim, config.mesh_cells,
                      config.gen_layers, config.gen_dim, start, config.latent_noise, config.prior_weight,
                      config.rigidity_weight, config.smoothness_weight, config.z_step, config.seed).to(device)
    model.volume.density.requires_grad_(False)  # stage 1: the canonical map is held fixed
    model.norm.fill_(scale)
    model.sigma2.fill_(noise_variance(particles, volume / scale, scale, seed=config.seed, device=device))
    return model


def flexible_reconstruction(model: FlexModel, particles: Particles, bp, config: Flex3DConfig,
                            device=None) -> tuple[list[torch.Tensor], float]:
    """Stage 2 (module docstring): the two half-sets' canonical maps ``(D, D, D)`` (image units, CPU) with the
    flows of ``model`` (full box, eval mode) held fixed, each by ``lbfgs_iterations`` of L-BFGS from its
    :func:`flexible_backprojection` (``flex_groups`` > 0) or its consensus half map ``bp.half1`` / ``bp.half2``;
    and the seconds it took."""
    scale = float(model.norm)
    labels = half_set_labels(particles, config.seed)
    t0 = time.perf_counter()
    halves = []
    for h, consensus in ((0, bp.half1), (1, bp.half2)):
        idx = np.nonzero(labels == h)[0]
        start = consensus if config.flex_groups <= 0 else flexible_backprojection(
            model, particles, idx, config.flex_groups, seed=config.seed, device=device)
        ridge = config.ridge / float((consensus / scale).var())
        halves.append(refine_canonical(model, particles, idx, start / scale, config.lbfgs_iterations, ridge,
                                       device=device).cpu() * scale)
    return halves, time.perf_counter() - t0

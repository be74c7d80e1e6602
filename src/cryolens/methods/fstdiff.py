"""FSTdiff (Ullrich, van den Berg, Brubaker, Fleet, Welling 2019, arXiv 1906.07582): a differentiable
Fourier-slice model with variational inference on both the volume and the poses (docs/METHODS.md).

Composition: ``q(V)`` a Gaussian per Fourier voxel
(:class:`~cryolens.volumes.variational.VariationalVoxelVolume`, per-shell Gaussian prior) × ``q(R, t)`` per
image (:mod:`~cryolens.inference.variational_pose`: a concentrated Lie-algebra Gaussian about a mean
rotation and a Gaussian shift, free per image — ``pose=variational`` — or from an encoder —
``pose=amortized``; ``pose=known`` uses the metadata's poses) × the ELBO
(:class:`~cryolens.inference.variational.VariationalReconstruction`) on the one engine.

Start: ``init_map`` (optionally low-passed to ``init_resolution`` Å) or zero; the pose table starts at the
metadata's rotations when there are any (a refinement), at each image's mode searched against ``init_map``
(``start_poses=search``: a refinement from a map alone; searched again later, after ``pose_search_epochs``,
by default 30 % and 60 % of the epochs) or
at random ones (``start_poses=random``, or no poses: ab initio); Gauss-Newton steps every ``pose_newton_every``
epochs. With known poses, ``q(V)`` is then calibrated in closed form
(:func:`~cryolens.inference.variational_calibrate.calibrate`: the exact marginal variances, ``τ²`` at
its EM fixed point; with ``calibrate_draws`` > 0 the marginals are instead read off exact posterior
draws, :func:`~cryolens.inference.variational_sampling.calibrate_sampled`, under ``prior_envelope``). With
``pose=variational`` the spreads are then set by Laplace (``pose_spread``, after ``pose_newton``
Gauss-Newton steps of the means; :mod:`~cryolens.inference.variational_laplace`). Outputs: the mean map
(gridding-corrected); ``std.mrc``, the per-voxel standard deviation of the real-space map under ``q(V)``
(``std_samples`` draws of the factorised family, or the exact draws' when there are any); per shell the
posterior and prior std and the noise power (metrics); the mean poses and, per image, ``rlnCryolensRotStdDeg``
(rotational spread, °) and ``rlnCryolensShiftStdPx`` (shift spread, px) in the STAR.

Values: the paper's model (Gaussian noise in Fourier space, factorised Gaussian ``q(V)``, reparametrised
pose posteriors, Adam) is followed; the training numbers below (learning rates and their decay, starting
spreads, batch, epochs, prior on shifts) are ours, chosen on small simulated sets: we found none in what we
read of the paper's code. Every option is a ``--set key=value`` of ``cryolens train fstdiff``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from ..imaging.grids import lowpass_volume
from ..inference.distributed import is_main
from ..inference.pose_refine import pose_error_metrics
from ..inference.training import sample_images
from ..inference.variational_sampling import finish_posterior
from ..inference.variational_setup import build_model, pose_strategies, pose_summaries, starting_poses
from .class3d import read_start_map
from .config import option
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train
from .variational_volume import VariationalVolumeOptions


@dataclass(frozen=True)
class FSTdiffConfig(VariationalVolumeOptions, TrainingConfig):
    """Options of ``fstdiff`` (module docstring)."""

    epochs: int = option(30, "passes over the data (epochs)")
    batch_size: int = option(32, "images per optimiser step, over all DDP processes")
    lr: float = option(0.02, "Adam learning rate of q(V), the noise and the prior")
    pose_lr: float = option(0.001, "Adam learning rate of the pose posterior (0 = lr)")
    pose_spread_lr: float = option(0.01, "pose=variational: Adam learning rate of the per-image spreads (0 = pose_lr)")
    lr_decay: float = option(0.95, "every learning rate times this per epoch")
    pose: Literal["variational", "amortized", "known"] = option("variational", "q(R, t): per image, encoder, known")
    start_poses: Literal["metadata", "random", "search"] = option(
        "metadata", "pose table start: the metadata's (when present), random, or searched against init_map")
    init_map: str | None = option(None, "start map (.mrc); none: zero mean (ab initio)")
    init_resolution: float = option(0.0, "low-pass of the start map, Å (0 = none)")
    rot_std_deg: float = option(2.0, "starting rotational spread σ per axis, degrees")
    pose_spread: Literal["laplace", "learned"] = option(
        "laplace", "pose=variational: final spreads by Laplace or as trained")
    pose_newton: int = option(0, "pose=variational: Gauss-Newton steps of the pose means after training (Laplace)")
    pose_newton_every: int = option(2, "pose=variational: a Gauss-Newton step of the means every N epochs (0: none)")
    infer_shifts: bool = option(True, "infer q(t) (else the metadata's shifts, or zero)")
    shift_std: float = option(0.5, "starting shift spread per axis, px")
    shift_prior_std: float = option(2.0, "std of the Gaussian shift prior, px")
    calibrate: bool = option(True, "pose=known: q(V) as the exact posterior's mean and marginals, τ² by moments")
    prior_envelope: Literal["none", "auto"] = option("none", "calibrate's prior: independent, or a support envelope")
    calibrate_draws: int = option(0, "calibrate: exact posterior draws for the marginals (0: stationary formula)")
    envelope_floor: float = option(0.02, "the envelope outside the support (relative)")
    enc_channels: int = option(16, "amortized: channels of the encoder's first block")
    enc_max_channels: int = option(128, "amortized: most channels of an encoder block")
    enc_hidden: tuple[int, ...] = option((512, 256), "amortized: widths of the encoder's heads")
    max_shift: float = option(4.0, "amortized: largest shift mean the encoder gives; search: the shift range, px")
    search_levels: int = option(2, "start_poses=search, pose_search_epochs: levels below the 15° base grid (2: 3.75°)")
    pose_search_epochs: tuple[int, ...] = option((), "pose=variational: after these epochs, searched modes replace "
                                                 "the means they beat (empty: 30 and 60 % of the epochs after a "
                                                 "start search, else none; [0]: none)")


def start(particles, config: FSTdiffConfig, device=None):
    """``(start map or None, particles to train on, start rotations of the pose table or None)`` (module
    docstring): the particles without their rotations unless ``pose=known``, with the searched shifts after
    ``start_poses=search``."""
    d = particles.box_size
    start_map = read_start_map(config.init_map, d)
    if start_map is not None:
        start_map = start_map.reshape(d, d, d)
        if config.init_resolution > 0:
            start_map = lowpass_volume(start_map, config.init_resolution, particles.pixel_size)
    if config.pose == "known" and particles.rotations is None:
        raise InputError(f"{particles.source or 'particles'}: fstdiff with pose=known needs poses in the metadata")
    if config.pose == "known":
        return start_map, particles, particles.rotations
    return (start_map, *starting_poses(particles, config, start_map, device or "cpu"))


def outputs(model, particles, truth, run, config: FSTdiffConfig, device, std: torch.Tensor | None = None
            ) -> MethodOutputs:
    """The :class:`MethodOutputs` of a trained model (rank 0; module docstring); ``std (D, D, D)`` the
    real-space std map in model units (None: from ``std_samples`` draws of the factorised ``q(V)``)."""
    norm = float(model.norm)
    volume = model.volume.render()[0].cpu() * norm
    std = model.std_map(config.std_samples, config.seed) if std is None else std.float().cpu() * norm
    summary, history = run_summary(run, config)
    metrics = {**summary, **model.posterior_metrics()}
    if config.pose == "known":
        return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, extra_volumes={"std": std},
                             metrics=metrics, history=history)
    poses = pose_summaries(model, particles, device)
    metrics.update(pose_error_metrics({"mean": poses.rotations}, truth))
    metrics["median_rot_spread_deg"] = float(np.median(poses.rot_spread_deg))
    cols = {"rlnCryolensRotStdDeg": poses.rot_spread_deg, "rlnCryolensShiftStdPx": poses.shift_spread_px}
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, rotations=poses.rotations,
                         shifts=poses.shifts, extra_volumes={"std": std}, particle_columns=cols, metrics=metrics,
                         history=history)


def fit(particles, known, run, config: FSTdiffConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``fstdiff`` (CTF known; poses known or started from the metadata or random)."""
    device = torch.device(device or "cpu")
    torch.manual_seed(config.seed)
    start_map, data, rot = start(particles, config, device)
    model = build_model(data, config, sample_images(particles, config.norm_images, config.seed), start_map, rot)
    train(model, data, run, config, device, progress, pose_strategies(config))
    std = finish_posterior(model, data, config, device) if is_main() else None
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    truth = particles.rotations if config.pose != "known" else None
    return outputs(model, data, truth, run, config, device, std)

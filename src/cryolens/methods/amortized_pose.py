"""What the amortized-pose recipes (``cryoai``, ``cryoposenet``) share (not a recipe itself): their common
options, and the wiring — a pose encoder and a volume trained together on the one engine
(:class:`~cryolens.inference.amortized.AmortizedPoseModel`), then poses for every image
(:func:`~cryolens.inference.amortized.infer_poses`) and an optional modal refinement
(:mod:`~cryolens.inference.pose_refine`: ``refine_poses``, ``refine_rounds`` gold-standard rounds).

Outputs: the trained map, the poses (refined ones when ``refine_poses``), the training summary and, when
the input metadata carries rotations (a simulated dataset's ground truth), the rotation error after
global alignment and the mirror check of the amortized poses and of every refinement round
(``median_rotation_error_amortized_deg``, ``…_refined_round1_deg``, ``…_refined_deg``). With
``refine_poses`` the images are back-projected with the refined poses
(:func:`~cryolens.methods.backprojection.backproject`): maps ``refined/map``, ``refined/half1``,
``refined/half2`` and ``resolution_halfmap_0143_refined_A``, and the amortized poses become the STAR
columns ``rlnCryolensAmortizedAngleRot``/``Tilt``/``Psi`` (RELION Euler angles, °) and
``rlnCryolensAmortizedShiftX``/``Y`` (px, the particle's centre relative to the image centre). After one
round that half-map FSC is optimistic (every pose was found against the one trained map, not against
independent halves).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..imaging.rotations import degrees, matrix_to_euler
from ..inference.amortized import AmortizedPoseModel, infer_poses
from ..inference.distributed import is_main
from ..inference.pose_refine import pose_error_metrics, refine_rounds
from ..inference.training import sample_images
from ..io.particles import Particles
from .backprojection import backproject
from .config import option
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train


@dataclass(frozen=True)
class PoseRefineOptions:
    """The options of the modal pose refinement after amortized inference (:mod:`~cryolens.inference.pose_refine`),
    shared by the recipes that have it (``cryoai``, ``cryoposenet``, ``atomvae``)."""

    refine_poses: bool = option(False, "refine each pose by hierarchical search against the trained map")
    refine_base_level: int = option(2, "HEALPix level of the refinement's base SO(3) grid")
    refine_levels: int = option(2, "refinement levels of the search")
    refine_keep: int = option(8, "poses kept per image from one level to the next")
    refine_shift_step: float = option(1.0, "step of the refinement's shift grid, px")


@dataclass(frozen=True)
class AmortizedPoseConfig(PoseRefineOptions, TrainingConfig):
    """Options every amortized-pose recipe has (the recipes add their decoder's and published values)."""

    enc_channels: int = option(16, "channels of the encoder's first convolution block")
    enc_max_channels: int = option(128, "most channels of an encoder block")
    enc_convs: int = option(2, "convolutions per encoder block")
    enc_hidden: tuple[int, ...] = option((512, 256), "widths of the encoder's fully connected heads")
    enc_lowpass: float = option(0.0, "low-pass of the encoder's input, Å (0 = none)")
    max_shift: float = option(0.0, "largest shift the encoder predicts, px (0 = no shifts)")
    symmetrized_loss: bool = option(True, "per-image loss the smaller of Y's and R_π Y's (cryoAI)")
    pose_heads: int = option(1, "rotation hypotheses per image, winner-take-all")
    refine_rounds: int = option(1, "refinement rounds; from the 2nd on, gold-standard against half maps")
    pose_batch: int = option(256, "images per batch when inferring and refining poses")


def finish(model: AmortizedPoseModel, particles: Particles, blind: Particles, run, config: AmortizedPoseConfig,
           device) -> MethodOutputs:
    """After training (rank 0): poses, optional refinement, map, metrics; the :class:`MethodOutputs`."""
    rot, sh = infer_poses(model, blind, device, config.pose_batch)
    volume = model.render_map().cpu()
    poses, extra, maps, columns = {"amortized": rot}, {}, {}, {}
    if config.refine_poses:
        angles = [degrees(a).numpy() for a in matrix_to_euler(rot)]
        columns = {f"rlnCryolensAmortized{k}": v for k, v in zip(("AngleRot", "AngleTilt", "AnglePsi", "ShiftX",
                                                                   "ShiftY"), [*angles, sh[:, 0].numpy(),
                                                                               sh[:, 1].numpy()])}
        rot, sh, earlier, extra = refine_rounds(volume, blind, config, device, backproject)
        poses.update({**earlier, "refined": rot})
        bp = backproject(dataclasses.replace(blind, rotations=rot, shifts=sh), device=device, seed=config.seed,
                         progress=False)
        extra["resolution_halfmap_0143_refined_A"] = bp.resolution
        maps = {"refined/map": bp.volume, "refined/half1": bp.half1, "refined/half2": bp.half2}
    if hasattr(model, "posterior_outputs"):  # a variational volume: its std map and per-shell summaries
        more, stats = model.posterior_outputs(config.std_samples, config.seed)
        maps, extra = {**more, **maps}, {**stats, **extra}
    summary, history = run_summary(run, config)
    metrics = {**summary, **pose_error_metrics(poses, particles.rotations), **extra}
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, rotations=rot, shifts=sh, metrics=metrics,
                         history=history, extra_volumes=maps, particle_columns=columns)


def fit_amortized(model: AmortizedPoseModel, particles: Particles, run, config: AmortizedPoseConfig, device,
                  progress: bool, recipe: str) -> MethodOutputs:
    """Train ``model`` on the one engine (resumable) and return its outputs (module docstring)."""
    if particles.ctf is None:
        raise InputError(f"{particles.name}: {recipe} needs CTF parameters")
    device = torch.device(device or "cpu")
    # the model never sees the metadata's poses: they are stripped here (kept only to score the result)
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model.set_norm(float(sample_images(blind, config.norm_images, config.seed).std()))
    train(model, blind, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    return finish(model, particles, blind, run, config, device)

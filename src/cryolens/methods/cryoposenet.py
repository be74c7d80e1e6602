"""CryoPoseNet (Nashed, Poitevin, Gupta, Woollard, Kagan, Yoon, Ratner 2021, ICCV workshops): a
real-space autoencoder for ab initio homogeneous reconstruction with amortized poses.

Composition: :class:`~cryolens.inference.pose_encoder.PoseEncoder` (CNN → S2S2 rotation + bounded shift)
× :class:`~cryolens.volumes.voxel.RealVoxelVolume` (a real-space density grid, decoded by rotating and
summing it: :func:`~cryolens.imaging.project.project_real`) × the CTF and shift of the forward model
(:func:`~cryolens.imaging.forward.render_images`, ``projector="real"``) × a plain L2 loss in real space, on
the one engine (:mod:`~cryolens.methods.amortized_pose`: wiring, poses, refinement, outputs).
``symmetrized_loss`` is off by default (the paper predates it; cryoAI added it) and can be turned on.

Values: docs/METHODS.md gives no hyper-parameters for CryoPoseNet beyond the architecture (CNN encoder,
rotation (and translation) per image, real-space voxel decoder, CTF, L2); the defaults here take cryoAI's
encoder (the same group's follow-up) at CPU size (16 → 128 channels, heads [512, 256]), Adam lr 1e-3
(a voxel grid learns slower than a network at 1e-4), batch 32, 20 epochs, rotations as S2S2 with
Gram–Schmidt (as cryoAI), shifts off (``max_shift`` 0). Every option is a ``--set key=value`` of
``cryolens train cryoposenet`` (:class:`CryoPoseNetConfig`). The decoder is a
:class:`~cryolens.volumes.protocol.RealSpaceProjector` imaged by the forward model
:class:`~cryolens.imaging.forward.ProjectorForward` (its own projection, then shift and CTF).

``variational_volume=true`` (not in the paper) replaces the point-estimate grid by FSTdiff's ``q(V)``, a
Gaussian per Fourier voxel with a per-shell prior, and the L2 loss by each image's share of the negative ELBO
at the encoder's pose (:class:`~cryolens.inference.amortized_variational.AmortizedVariationalVolume`): the
image is then predicted by the trilinear Fourier slice of the grid, not by the real-space projection, and the
run also writes ``std.mrc`` (per-voxel std of the map under ``q(V)``) and the per-shell posterior, prior and
noise (metrics). The ``q(V)`` options are FSTdiff's
(:class:`~cryolens.methods.variational_volume.VariationalVolumeOptions`), its means' learning rate ``volume_lr``
FSTdiff's ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..imaging.forward import ProjectorForward
from ..inference.amortized import AmortizedPoseModel
from ..inference.amortized_variational import AmortizedVariationalVolume
from ..inference.training import sample_images
from ..inference.variational_setup import volume_model
from ..volumes.voxel import RealVoxelVolume
from .amortized_pose import AmortizedPoseConfig, fit_amortized
from .config import option
from .variational_volume import VariationalVolumeOptions


@dataclass(frozen=True)
class CryoPoseNetConfig(VariationalVolumeOptions, AmortizedPoseConfig):
    """Options of cryoposenet (module docstring: cryoAI's encoder at CPU size, Adam 1e-3, batch 32)."""

    batch_size: int = option(32, "images per optimiser step, over all DDP processes")
    lr: float = option(1e-3, "learning rate of Adam / AdamW")
    symmetrized_loss: bool = option(False, "per-image loss the smaller of Y's and R_π Y's (off: the paper)")
    variational_volume: bool = option(False, "q(V), a Gaussian per Fourier voxel (FSTdiff's), instead of the grid")
    volume_lr: float = option(0.02, "variational_volume: Adam learning rate of q(V)'s means and prior")
    lr_decay: float = option(1.0, "variational_volume: every rate times this per epoch (1: constant)")


class CryoPoseNet(AmortizedPoseModel):
    """Pose encoder + real-space voxel grid; per-image error: mean squared real-space residual between
    the normalised image and the shifted, CTF-modulated real-space projection of the grid."""

    def __init__(self, box_size: int, pixel_size: float, config: CryoPoseNetConfig):
        super().__init__(box_size, pixel_size, config)
        self.volume = RealVoxelVolume(box_size)
        self.forward_model = ProjectorForward()
        self.register_buffer("norm", torch.ones(()))

    def set_norm(self, value: float) -> None:
        self.encoder.set_scale(value)
        self.norm.fill_(float(value))

    def image_errors(self, images, rotations, shifts, ctf) -> torch.Tensor:
        pred = self.forward_model(self.volume, rotations, shifts, ctf, self.pixel_size)
        return (pred - images / self.norm).square().mean((-2, -1))

    def render_map(self) -> torch.Tensor:
        return self.volume.render()[0] * self.norm


def fit(particles, known, run, config: CryoPoseNetConfig, device=None, progress=True):
    """Registry entry point of ``cryoposenet`` (poses unknown, CTF known)."""
    torch.manual_seed(config.seed)
    model = CryoPoseNet(particles.box_size, particles.pixel_size, config)  # built for q(V) too: its draws, as measured
    if config.variational_volume:  # q(V) on the data scale of the sample fit_amortized normalises by
        elbo = volume_model(particles, config, sample_images(particles, config.norm_images, config.seed), None)
        model = AmortizedVariationalVolume(particles.box_size, particles.pixel_size, config, elbo, config.volume_lr)
    return fit_amortized(model, particles, run, config, device, progress, "cryoposenet")

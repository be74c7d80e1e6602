"""AtomVAE's model (Rosenbaum et al. 2021, arXiv 2106.14108; docs/METHODS.md "AtomVAE"): a base atomic model
whose atoms (each a Gaussian) a decoder moves with ``z``, and encoders that give every image its ``z`` *and*
its pose, so that no pose is needed from the metadata.

Composition: :class:`~cryolens.inference.cryofold.CryoFoldModel` (mixture + decoder, the ``z`` encoder ``q(z |
image)``, the Gaussian likelihood with a learned scale, KL, structure restraints) with the pose given by
cryoAI's amortized :class:`~cryolens.inference.pose_encoder.PoseEncoder` (rotation by the S2S2 head, shift
by the bounded head) instead of the metadata; the prediction is shifted by the encoder's shift and the
target is the image as recorded.

Schedule: for the first ``warmup_epochs`` epochs only the pose encoder (and the scale) train, against the
base model (``z`` unused, no KL, no restraints: the decoder sits at the base model); then everything trains
jointly (:meth:`AtomVAEModel.on_epoch_start`, called by the engine, so a resumed run keeps the schedule).
"""

from __future__ import annotations

import torch

from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..volumes.gaussian_mixture import GaussianMixtureVolume
from .cryofold import CryoFoldModel
from .losses import centered_hartley, image_mse
from .pose_encoder import PoseEncoder
from .structure_losses import StructureRestraints


class AtomVAEModel(CryoFoldModel):
    """CryoFold's model with amortized poses and a pose-only warm-up (module docstring). ``forward(batch) →
    {"loss", "mse", "kl", ...}``; the batch's rotations and shifts, if any, are never read."""

    def __init__(self, volume: GaussianMixtureVolume, restraints: StructureRestraints, pose_encoder: PoseEncoder,
                 enc_layers: int = 3, enc_dim: int = 256, beta: float | None = None, warmup_epochs: int = 5):
        super().__init__(volume, restraints, enc_layers, enc_dim, beta)
        self.pose_encoder = pose_encoder
        self.warmup = int(warmup_epochs)
        self.joint = self.warmup <= 0

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Pose-only before epoch ``warmup_epochs`` (0-based), joint from then on."""
        self.joint = epoch >= self.warmup

    def targets(self, batch: dict) -> torch.Tensor:
        """Normalised Hartley images ``(B, D, D)`` as recorded (the shift is the encoder's, on the prediction)."""
        return centered_hartley(batch["image"]) / self.norm

    @torch.no_grad()
    def set_scale(self, batch: dict) -> float:
        """``norm`` = std of the images' Hartley transforms; the scale matches the base model's power at the
        encoder's initial poses to the images' (a least-squares scale needs poses)."""
        self.norm.fill_(float(centered_hartley(batch["image"]).std()))
        lat = self._lattice(batch["image"].device)
        rot, shift = self.pose_encoder(batch["image"])
        p, y = self.predicted(batch, None, rot, shift), lat.gather(self.targets(batch))
        scale = float((y.square().sum() / p.square().sum().clamp_min(1e-20)).sqrt())
        self.log_scale.fill_(float(torch.log(torch.tensor(scale + 1e-20))))
        return scale

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        rot, shift = self.pose_encoder(batch["image"])
        if self.joint:
            return self.vae_loss(batch, rot, shift)
        lat = self._lattice(batch["image"].device)
        pred = self.predicted(batch, None, rot, shift) * self.log_scale.exp()
        mse = image_mse(pred, lat.gather(self.targets(batch))).mean()
        return {"loss": mse, "mse": mse.detach(), "kl": torch.zeros((), device=mse.device)}


@torch.no_grad()
def encoder_poses(model: AtomVAEModel, particles: Particles, device, batch_size: int = 256
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rotations (N, 3, 3), shifts (N, 2) px)`` CPU float32 of every particle from the pose encoder (eval
    mode), in STAR order; rotations image → volume frame."""
    was = model.training
    model.eval()
    rots, shifts = torch.empty(len(particles), 3, 3), torch.empty(len(particles), 2)
    for idx, images in iterate_batches(particles, batch_size):
        r, t = model.pose_encoder(images.to(device))
        rots[idx], shifts[idx] = r.float().cpu(), t.float().cpu()
    model.train(was)
    return rots, shifts

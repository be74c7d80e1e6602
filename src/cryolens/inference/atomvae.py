"""AtomVAE's model (Rosenbaum et al. 2021, arXiv 2106.14108; docs/METHODS.md "AtomVAE"): a base atomic model
whose atoms (each a Gaussian) a decoder moves with ``z``, and encoders that give every image its ``z`` *and*
its pose, so that no pose is needed from the metadata.

Composition: :class:`~cryolens.inference.cryofold.CryoFoldModel` (mixture + decoder, the ``z`` encoder ``q(z |
image)``, the Gaussian likelihood with a learned scale, KL, structure restraints) with the pose given by
cryoAI's amortized :class:`~cryolens.inference.pose_encoder.PoseEncoder` (``M`` S2S2 rotation heads, a bounded
shift head) instead of the metadata, chosen as cryoAI's are (:func:`~cryolens.inference.amortized.winner_poses`:
of the ``M`` hypotheses the one with the smallest image error wins, and with ``symmetrized`` the loss is the
smaller of the image's and its π-rotated copy's); the prediction is shifted by the encoder's shift and the
target is the image as recorded.

Schedule: for the first ``warmup_epochs`` epochs only the pose encoder (and the scale) train, against the
base model (``z`` unused, no KL, no restraints: the decoder sits at the base model); then everything trains
jointly (:meth:`AtomVAEModel.on_epoch_start`, called by the engine, so a resumed run keeps the schedule).
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.noise import background_sigma
from ..imaging.rotations import moved_poses
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..volumes.gaussian_mixture import GaussianMixtureVolume
from ..volumes.lattice import SliceLattice, fourier_to_hartley
from .amortized import winner_poses
from .cryofold import CryoFoldModel
from .e2gmm import predicted_transforms
from .losses import centered_hartley, image_mse
from .pose_encoder import PoseEncoder
from .structure_losses import StructureRestraints


class AtomVAEModel(CryoFoldModel):
    """CryoFold's model with amortized poses and a pose-only warm-up (module docstring). ``forward(batch) →
    {"loss", "mse", "kl", "pi_fraction", ...}``; the batch's rotations and shifts, if any, are never read.
    symmetrized: cryoAI's symmetrized loss (module docstring). warmup_radius: the warm-up's image error only
    inside this radius, px of the ``D`` lattice (0: to Nyquist), as cryoAI's ``loss_resolution``."""

    def __init__(self, volume: GaussianMixtureVolume, restraints: StructureRestraints, pose_encoder: PoseEncoder,
                 enc_layers: int = 3, enc_dim: int = 256, beta: float | None = None, warmup_epochs: int = 5,
                 symmetrized: bool = True, warmup_radius: float = 0.0):
        super().__init__(volume, restraints, enc_layers, enc_dim, beta)
        self.pose_encoder = pose_encoder
        d = volume.box_size
        self.warmup_lattice = SliceLattice(d, radius=warmup_radius) if 0 < warmup_radius < d / 2 else self.lattice
        self.warmup = int(warmup_epochs)
        self.joint = self.warmup <= 0
        self.symmetrized = bool(symmetrized)

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Pose-only before epoch ``warmup_epochs`` (0-based), joint from then on."""
        self.joint = epoch >= self.warmup

    def targets(self, batch: dict) -> torch.Tensor:
        """Normalised Hartley images ``(B, D, D)`` as recorded (the shift is the encoder's, on the prediction)."""
        return centered_hartley(batch["image"]) / self.norm

    @torch.no_grad()
    def set_scale(self, batch: dict) -> float:
        """``norm`` = std of the images' Hartley transforms, the pose encoder's input scale the images' std; the
        scale matches the base model's power at the encoder's initial poses to the images' signal power (a
        least-squares scale needs poses): their power on the lattice less that of white noise of the std of
        the pixels beyond the mixture's radius (:func:`~cryolens.imaging.noise.background_sigma`)."""
        images = batch["image"]
        self.norm.fill_(float(centered_hartley(images).std()))
        self.pose_encoder.set_scale(float(images.std()))
        lat = self._lattice(images.device)
        rot, shift = self.pose_encoder.hypotheses(images)
        p, y = self.predicted(batch, None, rot[:, 0], shift), lat.gather(self.targets(batch))
        c, _, s = self.volume.params(None)
        radius = float((c[0].norm(dim=-1) + 2 * s[0].abs()).max()) / self.volume.pixel_size
        try:
            noise = (images.shape[-1] * background_sigma(images, radius) / float(self.norm)) ** 2
        except ValueError:  # no background pixels: all power counted as signal
            noise = 0.0
        power = float(y.square().mean())
        scale = (max(power - noise, 0.05 * power) / float(p.square().mean().clamp_min(1e-20))) ** 0.5
        self.log_scale.fill_(float(torch.log(torch.tensor(scale + 1e-20))))
        return scale

    def image_errors(self, images: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor, ctf,
                     z: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` Gaussian-likelihood error (mean squared normalised Hartley residual on the lattice, in the
        warm-up its band) of
        ``images (B, D, D)`` against the mixture at ``z (B, L)`` (None: the base model) under ``rotations (B, 3,
        3)``, shifted by ``shifts (B, 2)`` px, times ``ctf`` (None: no CTF) and the learned scale."""
        lat = self._lattice(images.device, None if self.joint else self.warmup_lattice)
        f = predicted_transforms(self.volume, rotations, z, shifts, ctf, self.volume.pixel_size)
        pred = lat.gather(fourier_to_hartley(f)) / self.norm * self.log_scale.exp()
        return image_mse(pred, lat.gather(centered_hartley(images)) / self.norm)

    def poses(self, batch: dict, z: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(error (B,), pi (B,) bool, rotations (B, 3, 3), shifts (B, 2) px)`` of the batch's images at ``z
        (B, L)`` (None: the base model), as cryoAI's (:func:`~cryolens.inference.amortized.winner_poses`)."""
        ctf = batch.get("ctf")

        def errors(x, rots, sh, rows):
            return self.image_errors(x, rots, sh, None if ctf is None else ctf[rows], None if z is None else z[rows])

        return winner_poses(self.pose_encoder, batch["image"], errors, self.symmetrized)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.joint:
            won = {}

            def errors(z: torch.Tensor) -> torch.Tensor:
                e, won["pi"], _, _ = self.poses(batch, z)
                return e

            out = self.vae_loss(batch, errors=errors)
            return {**out, "pi_fraction": won["pi"].float().mean()}
        e, pi, _, _ = self.poses(batch)
        mse = e.mean()
        return {"loss": mse, "mse": mse.detach(), "kl": torch.zeros((), device=mse.device),
                "pi_fraction": pi.float().mean()}


@torch.no_grad()
def encoder_poses(model: AtomVAEModel, particles: Particles, device, z: torch.Tensor | None = None,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rotations (N, 3, 3), shifts (N, 2) px)`` CPU float32 of every particle from the pose encoder (eval
    mode; the winning hypothesis and branch against the mixture at each image's row of ``z (N, L)``, or the
    base model), in STAR order; rotations image → volume frame."""
    was = model.training
    model.eval()
    rots, shifts = torch.empty(len(particles), 3, 3), torch.empty(len(particles), 2)
    for idx, images in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        batch = {"image": images.to(device), "ctf": None if particles.ctf is None else particles.ctf[it].to(device)}
        _, _, r, t = model.poses(batch, None if z is None else z[it].to(device))
        rots[it], shifts[it] = r.float().cpu(), t.float().cpu()
    model.train(was)
    return rots, shifts


@torch.no_grad()
def hold_frame(volume: GaussianMixtureVolume, z: np.ndarray, rotations: torch.Tensor, shifts: torch.Tensor,
               selection: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fix the gauge of a trained AtomVAE's motion on ``selection`` of its base model (``"A"``, ``"A:46-99"``, …:
    :meth:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume.gaussians_of`;
    :meth:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume.set_frame`: from now on every map, model and
    projection of ``volume`` has that part at its best fit to the base model) and return the poses that give
    the same images in that frame (:func:`~cryolens.imaging.rotations.moved_poses`): ``rotations (N, 3, 3)``
    image → volume frame and ``shifts (N, 2)`` px of the images whose latents are ``z (N, L)``. Without it the
    decoder may turn the whole model with ``z``, the poses absorbing the turn (docs/METHODS.md "AtomVAE")."""
    volume.set_frame(volume.gaussians_of(selection))
    q, c = volume.frame(torch.as_tensor(np.asarray(z), dtype=volume.centers.dtype, device=volume.centers.device))
    return moved_poses(rotations, shifts, q.to(rotations).cpu(), c.to(rotations).cpu(), volume.pixel_size)

"""Amortized pose inference (cryoAI, CryoPoseNet): a pose encoder and a volume trained together on the one
engine, and the poses it gives every image.

Model (:class:`AmortizedPoseModel`): :class:`~cryolens.inference.pose_encoder.PoseEncoder` gives
``(R, t)`` per image; a subclass says how the volume predicts an image and compares it
(``image_errors``: the recipe's decoder and loss). With ``pose_heads = M > 1`` the encoder gives ``M``
rotation hypotheses per image and the per-image error is the smallest of their ``M`` errors
(winner-take-all; the gradient reaches the winning head only). With ``symmetrized_loss`` the per-image
error is :func:`~cryolens.inference.losses.symmetrized_loss` (the encoder sees ``Y`` and ``R_π Y``). The
engine's contract: ``forward(batch) → {"loss", "error", "pi_fraction"}``; the metadata's poses never reach
it (the recipe strips them). After training (:func:`infer_poses`) each image's pose is the encoder's, taken
from the better of the two branches when the loss is symmetrized (a win of the π-branch gives
``inplane_pi_pose(E(R_π Y))``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..imaging.rotations import inplane_pi_pose
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .losses import symmetrized_loss
from .pose_encoder import PoseEncoder


class AmortizedPoseModel(nn.Module, abc.ABC):
    """Pose encoder + a volume. Abstract: a recipe's subclass supplies the volume through
    ``set_norm``, ``image_errors`` and ``render_map`` (``CryoAI``, ``CryoPoseNet``)."""

    def __init__(self, box_size: int, pixel_size: float, config: Any):
        super().__init__()
        self.pixel_size = float(pixel_size)
        self.symmetrized = bool(config.symmetrized_loss)
        self.encoder = PoseEncoder(box_size, int(config.enc_channels), int(config.enc_max_channels),
                                   int(config.enc_convs), tuple(int(h) for h in config.enc_hidden),
                                   float(config.max_shift), self.pixel_size / float(config.enc_lowpass)
                                   if float(config.enc_lowpass) > 0 else 0.0, int(config.pose_heads))

    @abc.abstractmethod
    def set_norm(self, value: float) -> None:
        """The data scale: ``value`` is the std of the real-space images."""

    @abc.abstractmethod
    def image_errors(self, images, rotations, shifts, ctf) -> torch.Tensor:
        """``(B,)`` per-image loss of ``images (B, D, D)`` under ``rotations (B, 3, 3)``, ``shifts (B, 2)`` px
        and ``ctf`` (a :class:`~cryolens.imaging.ctf.CTFParams` batch or ``None``)."""

    @abc.abstractmethod
    def render_map(self) -> torch.Tensor:
        """The trained map ``(D, D, D)`` float32 real space ``[z, y, x]``, in the images' units."""

    def branches(self, images: torch.Tensor, ctf) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(error (B,), pi (B,) bool, rotations (B, 3, 3), shifts (B, 2))``: the per-image loss and the
        pose of each image (module docstring), symmetrized or not."""

        def errors(x, rots, sh, rows):
            return self.image_errors(x, rots, sh, None if ctf is None else ctf[rows])

        return winner_poses(self.encoder, images, errors, self.symmetrized)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        e, pi, _, _ = self.branches(batch["image"], batch.get("ctf"))
        loss = e.mean()
        return {"loss": loss, "error": loss.detach(), "pi_fraction": pi.float().mean()}


def winner_poses(encoder: PoseEncoder, images: torch.Tensor,
                 image_errors: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 symmetrized: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The amortized poses of ``images (B, D, D)`` and their per-image loss: ``(error (B,), pi (B,) bool,
    rotations (B, 3, 3), shifts (B, 2) px)``. Of the encoder's ``M`` rotation hypotheses the one with the
    smallest error wins (chosen without a graph, so the gradient reaches the winning head only); with
    ``symmetrized`` the loss is :func:`~cryolens.inference.losses.symmetrized_loss` and a win of the
    π-branch gives the pose ``inplane_pi_pose(E(R_π Y))``.

    image_errors: ``(x (B', D, D), rotations (B', 3, 3), shifts (B', 2), rows (B',) long) → (B',)``, the
    per-image error of images ``x`` under those poses, where ``rows`` gives the index in ``images`` that
    each row of ``x`` comes from (its CTF, its latent …)."""
    b = images.shape[0]
    out = {}

    def err(x: torch.Tensor) -> torch.Tensor:
        rots, sh = encoder.hypotheses(x)  # (B', M, 3, 3), (B', 2)
        n, m = rots.shape[:2]
        idx = torch.arange(n, device=x.device)
        best = torch.zeros(n, dtype=torch.long, device=x.device)
        if m > 1:
            rows = idx.repeat_interleave(m)
            with torch.no_grad():
                e_all = image_errors(x[rows], rots.detach().reshape(n * m, 3, 3), sh.detach()[rows], rows % b)
            best = e_all.reshape(n, m).argmin(dim=1)
        out["rot"], out["shift"] = rots[idx, best], sh
        return image_errors(x, out["rot"], sh, idx % b)

    if not symmetrized:
        e = err(images)
        return e, torch.zeros(b, dtype=torch.bool, device=e.device), out["rot"], out["shift"]
    e, pi = symmetrized_loss(images, err)
    rot_pi, sh_pi = inplane_pi_pose(out["rot"][b:], out["shift"][b:])
    rot = torch.where(pi[:, None, None], rot_pi, out["rot"][:b])
    sh = torch.where(pi[:, None], sh_pi, out["shift"][:b])
    return e, pi, rot, sh


@torch.no_grad()
def infer_poses(model: AmortizedPoseModel, particles: Particles, device, batch_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rotations (N, 3, 3), shifts (N, 2) px)`` CPU float32 of every particle, in STAR order (eval mode)."""
    from ..memory import release_free_heap

    was = model.training
    model.eval()
    n = len(particles)
    rots, shifts = torch.empty(n, 3, 3), torch.empty(n, 2)  # allocated once, before the big temporaries
    for idx, images in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        ctf = None if particles.ctf is None else particles.ctf[it].to(device)
        _, _, r, s = model.branches(images.to(device), ctf)
        rots[it] = r.float().cpu()
        shifts[it] = s.float().cpu()
        del r, s
        release_free_heap()  # the batch's freed activations: back to the system (cryolens.memory)
    model.train(was)
    return rots, shifts

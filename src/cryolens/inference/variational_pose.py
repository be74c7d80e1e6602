"""Variational pose posteriors ``q(R, t)`` per image (FSTdiff, docs/METHODS.md).

The family, for image ``i``: a concentrated distribution on SO(3) parametrised in the Lie algebra around a
mean rotation, ``R = R̄_i · exp([ε]×)`` with ``ε ~ N(0, diag σ_i²)`` (radians; ``exp`` the rotation-vector
map, :func:`~cryolens.imaging.rotations.rotvec_to_matrix`; rotations image → volume frame,
docs/CONVENTIONS.md), and an independent Gaussian on the shift, ``t ~ N(t̄_i, diag s_i²)`` (px, the
particle centre relative to the image centre). Both are sampled by reparametrisation
(:func:`sample_poses`), so the ELBO is differentiable in every parameter.

Two ways to hold the parameters:

- :class:`VariationalPoseTable` (non-amortized): free ``(R̄, σ, t̄, s)`` per image. ``R̄ = R₀ · exp([δ]×)``
  with ``R₀`` a buffer and ``δ`` the learned Lie-algebra offset; :meth:`~VariationalPoseTable.fold` moves
  ``δ`` into ``R₀`` (a retraction, once per epoch) so the offsets stay small.
- :class:`AmortizedPosePosterior`: a :class:`~cryolens.inference.pose_encoder.PoseEncoder` gives ``R̄`` and
  ``t̄`` and one more head gives ``log σ`` (3) and ``log s`` (2) of the same family.

**Priors and KL.** Rotation: the uniform (Haar) distribution on SO(3). Its density in exponential
coordinates is ``J(ε) / 8π²`` with ``J(ε) = 2(1 − cos θ)/θ²`` (``θ = |ε|``), so
``KL(q ‖ Haar) = E_q[log N(ε; 0, Σ)] − E_q[log J(ε)] + log 8π²``. The first term is closed form (minus the
Gaussian entropy); the second has none, and :func:`rotation_kl_uniform` takes its second-order expansion
``log J ≈ −θ²/12``, ``E θ² = Σ σ_j²``; the wrapping of the Gaussian beyond ``θ = π`` is neglected. Both
approximations are good for concentrated posteriors (relative error ``O(σ⁴)``; tested against Monte
Carlo with the exact ``J``); ``σ`` is capped at 1 rad. Shift: ``N(0, prior_std² I)``, KL in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..imaging.rotations import rotvec_to_matrix
from ..volumes.variational import gaussian_kl
from .pose_encoder import PoseEncoder, _head

LOG_VOLUME_SO3 = math.log(8 * math.pi**2)
MAX_LOG_ROT_STD = 0.0  # σ ≤ 1 rad: the family must stay concentrated for the KL's expansion


def rotation_kl_uniform(log_std: torch.Tensor) -> torch.Tensor:
    """``KL(q(R) ‖ Haar)`` per image ``(B,)`` (nats) for ``log_std (B, 3)`` = ``log σ`` (radians), the
    second-order closed form ``log 8π² − Σ_j ½ log(2πe σ_j²) + Σ_j σ_j² / 12`` (module docstring)."""
    var = (2 * log_std).exp()
    return LOG_VOLUME_SO3 - 0.5 * (math.log(2 * math.pi * math.e) + 2 * log_std).sum(-1) + var.sum(-1) / 12


def haar_log_jacobian(eps: torch.Tensor) -> torch.Tensor:
    """``log J(ε) = log(2(1 − cos θ)/θ²)`` ``(...,)`` for rotation vectors ``eps (..., 3)`` (radians): the
    Haar density in exponential coordinates relative to Lebesgue measure (its limit 0 at ``θ = 0``)."""
    theta = eps.norm(dim=-1)
    small = theta < 1e-4
    t = torch.where(small, torch.ones_like(theta), theta)
    return torch.where(small, -theta.square() / 12, torch.log(2 * (1 - torch.cos(t)) / t.square()))


def shift_kl(mean: torch.Tensor, log_std: torch.Tensor, prior_std: float) -> torch.Tensor:
    """``KL(N(mean, diag s²) ‖ N(0, prior_std² I))`` per image ``(B,)`` for ``mean, log_std (B, 2)`` px."""
    prior = torch.full_like(mean, float(prior_std) ** 2)
    return gaussian_kl(mean, (2 * log_std).exp(), prior).sum(-1)


def sample_poses(rot_mean: torch.Tensor, log_rot_std: torch.Tensor, shift_mean: torch.Tensor,
                 log_shift_std: torch.Tensor | None, generator: torch.Generator | None = None,
                 draw: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rotations (B, 3, 3), shifts (B, 2))`` drawn from ``q`` by reparametrisation (module docstring);
    ``draw=False`` returns the means. ``log_shift_std`` None: the shift is ``shift_mean`` exactly."""
    if not draw:
        return rot_mean, shift_mean
    sd = log_rot_std.clamp_max(MAX_LOG_ROT_STD).exp()
    eps = torch.randn(sd.shape, generator=generator, device=sd.device, dtype=sd.dtype) * sd
    rotations = rot_mean @ rotvec_to_matrix(eps)
    if log_shift_std is None:
        return rotations, shift_mean
    noise = torch.randn(shift_mean.shape, generator=generator, device=sd.device, dtype=sd.dtype)
    return rotations, shift_mean + log_shift_std.exp() * noise


class VariationalPoseTable(nn.Module):
    """Free ``q(R, t)`` parameters per image (module docstring). rotations ``(N, 3, 3)``: the starting
    means ``R₀`` (known poses for a refinement, random ones ab initio). shifts ``(N, 2)`` px: starting
    shift means. rot_std: initial ``σ`` (rad). shift_std: initial ``s`` (px), or None (shifts fixed at
    ``shifts``, no shift posterior)."""

    def __init__(self, rotations: torch.Tensor, shifts: torch.Tensor, rot_std: float, shift_std: float | None):
        super().__init__()
        n = rotations.shape[0]
        self.register_buffer("base", rotations.detach().float().clone())
        self.delta = nn.Parameter(torch.zeros(n, 3))
        self.log_rot_std = nn.Parameter(torch.full((n, 3), math.log(float(rot_std))))
        self.shift_mean = nn.Parameter(shifts.detach().float().clone(), requires_grad=shift_std is not None)
        self.log_shift_std = None
        if shift_std is not None:
            self.log_shift_std = nn.Parameter(torch.full((n, 2), math.log(float(shift_std))))

    def forward(self, index: torch.Tensor, images: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(rot_mean (B, 3, 3), log_rot_std (B, 3), shift_mean (B, 2), log_shift_std (B, 2) | None)`` of
        the images ``index (B,)`` (``images`` unused: the table is not amortized)."""
        rot = self.base[index] @ rotvec_to_matrix(self.delta[index])
        lss = None if self.log_shift_std is None else self.log_shift_std[index]
        return rot, self.log_rot_std[index], self.shift_mean[index], lss

    @torch.no_grad()
    def fold(self) -> None:
        """``R₀ ← R₀ exp([δ]×)``, ``δ ← 0``: the same means, small offsets again."""
        self.base.copy_(self.base @ rotvec_to_matrix(self.delta))
        self.delta.zero_()


class AmortizedPosePosterior(nn.Module):
    """``q(R, t | image)``: a :class:`PoseEncoder` (``encoder``: ``R̄``, ``t̄``) plus a head on its features
    giving ``log σ`` (3) and ``log s`` (2) (``hidden``: its widths), started at ``rot_std`` rad and
    ``shift_std`` px (``shift_std`` None, or an encoder without shift head: shifts fixed at the batch's)."""

    def __init__(self, encoder: PoseEncoder, hidden: tuple[int, ...], rot_std: float, shift_std: float | None):
        super().__init__()
        self.encoder = encoder
        self.infer_shifts = shift_std is not None and encoder.shift_head is not None
        self.spread_head = _head(encoder.rotation_head[0].in_features, tuple(hidden), 5)
        last = self.spread_head[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([math.log(rot_std)] * 3 + [math.log(shift_std or 1.0)] * 2))

    def forward(self, index: torch.Tensor, images: torch.Tensor, shifts: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As :meth:`VariationalPoseTable.forward`, from ``images (B, D, D)``; ``shifts (B, 2)``: the
        batch's shifts, used when shifts are not inferred."""
        feat = self.encoder.features(images)
        rot, t = self.encoder.from_features(feat)
        spread = self.spread_head(feat).float()
        if not self.infer_shifts:
            return rot[:, 0], spread[:, :3], (torch.zeros_like(t) if shifts is None else shifts), None
        return rot[:, 0], spread[:, :3], t, spread[:, 3:]

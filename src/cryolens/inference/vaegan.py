"""A 2D VAE-GAN on particle images (CryoVAEGAN, Miolane et al. 2020; docs/METHODS.md), on the one engine.

Model (:class:`VAEGAN`): a CNN encoder ``image → (μ, log σ²)`` of a generic latent ``z`` (``L`` dims;
:class:`~cryolens.inference.encoders.CNNEncoder`), a decoder ``z → image`` (:class:`ImageDecoder`) with a
learned scale ``s`` (a log-variance of the pixels) and a discriminator (the CNN
:class:`~cryolens.inference.adversarial.Critic`) that tells real images from reconstructions and from
decodes of prior draws ``z ~ N(0, I)``. Per image, with ``P = D²`` pixels::

    recon = Σ_pixels (x − x̂)² / (2 e^s) + P s / 2        (Gaussian with a learned scale)
    loss  = (recon + β · KL(q(z|x) ‖ N(0, I))) / P + γ · [ℓ(D(x̂), 1) + ℓ(D(decode(z_prior)), 1)] / 2

with ``ℓ`` the logistic loss (binary cross-entropy on logits); the discriminator is trained on
``ℓ(D(x), 1) + [ℓ(D(x̂), 0) + ℓ(D(decode(z_prior)), 0)] / 2`` with an Adam of its own, one step before each
engine step (the engine's ``before_step`` hook, optimiser checkpointed through ``inner_optimizers``).
Images are divided by ``norm`` (the data scale). The authors' code scores pixels with a Bernoulli
cross-entropy over ``exp(scale)`` plus ``2·scale``, for images in [0, 1]; cryo-EM images are signed and
unbounded, so the Gaussian with a learned scale stands in for it.

:func:`encode_all` gives ``μ`` of every image; :func:`latent_readout` reads the in-plane angle (the angle of
the first two principal components of ``μ``) and a defocus coordinate (the principal component most
rank-correlated with the dataset's defocus) off the latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..imaging.fft import hartley2
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .adversarial import Critic
from .encoders import CNNEncoder
from .losses import kl_standard_normal


class ImageDecoder(nn.Module):
    """``z (B, L) → (B, D, D)`` images: an MLP to ``channels`` maps of ``D/4`` px a side, then two blocks of
    bilinear up-sampling ×2 and a 3×3 convolution (LeakyReLU 0.2 between). ``D`` a multiple of 4."""

    def __init__(self, box_size: int, zdim: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        self.c, self.s = int(channels), int(box_size) // 4
        self.mlp = nn.Sequential(nn.Linear(int(zdim), hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, self.c * self.s * self.s), nn.LeakyReLU(0.2))
        self.conv1 = nn.Conv2d(self.c, max(self.c // 2, 1), 3, padding=1)
        self.conv2 = nn.Conv2d(max(self.c // 2, 1), 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mlp(z).reshape(-1, self.c, self.s, self.s)
        h = F.leaky_relu(self.conv1(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)), 0.2)
        return self.conv2(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))[:, 0]


def _logistic(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class VAEGAN(nn.Module):
    """The 2D VAE-GAN (module docstring). config: ``zdim``, ``beta``, ``gan_weight``, ``enc_channels``,
    ``dec_channels``, ``hidden``, ``critic_channels``, ``critic_max_channels``, ``lr`` (the discriminator's
    Adam too) and ``betas``. norm: the data scale."""

    def __init__(self, box_size: int, config: Any, norm: float = 1.0):
        super().__init__()
        self.zdim, self.beta, self.gan_weight = int(config.zdim), float(config.beta), float(config.gan_weight)
        self.encoder = CNNEncoder(box_size, self.zdim, int(config.enc_channels), int(config.hidden))
        self.decoder = ImageDecoder(box_size, self.zdim, int(config.dec_channels), int(config.hidden))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.critic = Critic(box_size, int(config.critic_channels), int(config.critic_max_channels))
        self.betas = tuple(float(b) for b in config.betas)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=float(config.lr), betas=self.betas)
        self.register_buffer("norm", torch.tensor(float(norm)))

    def param_groups(self) -> list[dict]:
        params = [*self.encoder.parameters(), *self.decoder.parameters(), self.log_scale]
        return [{"params": params, "betas": self.betas}]

    def inner_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optimizer}

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ²)`` ``(B, L)`` of raw images ``(B, D, D)`` (divided by ``norm`` here)."""
        return self.encoder(hartley2(images / self.norm))

    def _decodes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(hartley2(x))
        z = mu + torch.randn(mu.shape).to(mu.device) * torch.exp(0.5 * logvar)
        prior = self.decoder(torch.randn(mu.shape).to(mu.device))
        return mu, logvar, self.decoder(z), prior

    def before_step(self, batch: dict, trainer: Any) -> dict[str, torch.Tensor]:
        """One discriminator step: real images against reconstructions and prior decodes."""
        x = batch["image"] / self.norm
        with torch.no_grad():
            _, _, recon, prior = self._decodes(x)
        loss = _logistic(self.critic(x), 1.0) + 0.5 * (_logistic(self.critic(recon), 0.0)
                                                      + _logistic(self.critic(prior), 0.0))
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        return {"discriminator": loss.detach()}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["image"] / self.norm
        mu, logvar, recon, prior = self._decodes(x)
        p = x.shape[-1] * x.shape[-2]
        rec = ((x - recon).square().sum((-2, -1)) / (2 * torch.exp(self.log_scale)) + p * self.log_scale / 2).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        adv = 0.5 * (_logistic(self.critic(recon), 1.0) + _logistic(self.critic(prior), 1.0))
        return {"loss": (rec + self.beta * kl) / p + self.gan_weight * adv, "recon": rec / p, "kl": kl,
                "adversarial": adv, "log_scale": self.log_scale.detach()}


@torch.no_grad()
def encode_all(model: VAEGAN, particles: Particles, device, batch_size: int = 256) -> np.ndarray:
    """``μ`` ``(N, L)`` float32 of every image, in STAR order."""
    model.eval()
    out = [model.encode(images.to(device))[0].cpu() for _, images in iterate_batches(particles, batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def latent_readout(z: np.ndarray, defocus: np.ndarray | None = None) -> dict[str, np.ndarray | int | float]:
    """Read-outs of latents ``z (N, L)`` (``L ≥ 2``): ``pcs (N, L)`` principal-component scores, ``angle (N,)``
    radians ``atan2(PC2, PC1)`` (the in-plane angle up to an offset and a direction, when the latent holds it
    as a circle), and with ``defocus (N,)`` Å: ``defocus_pc`` (0-based index of the component with the
    largest |Spearman ρ| with it), ``defocus_spearman`` (that ρ) and ``defocus_coordinate (N,)`` (its scores)."""
    from scipy.stats import spearmanr

    x = np.asarray(z, dtype=np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pcs = x @ vt.T
    out: dict[str, Any] = {"pcs": pcs, "angle": np.arctan2(pcs[:, 1], pcs[:, 0])}
    if defocus is not None:
        rho = np.array([spearmanr(pcs[:, k], defocus)[0] for k in range(pcs.shape[1])])
        k = int(np.nanargmax(np.abs(rho)))
        out.update(defocus_pc=k, defocus_spearman=float(rho[k]), defocus_coordinate=pcs[:, k])
    return out


def circular_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """|Jammalamadaka–SenGupta circular correlation| of angles ``a``, ``b`` ``(N,)`` radians (invariant to a
    constant offset of either; its absolute value also to reversing one's direction)."""
    def centred(t: np.ndarray) -> np.ndarray:
        return np.sin(t - np.arctan2(np.sin(t).sum(), np.cos(t).sum()))

    sa, sb = centred(np.asarray(a, float)), centred(np.asarray(b, float))
    return float(abs((sa * sb).sum()) / np.sqrt((sa**2).sum() * (sb**2).sum()))


def inplane_angles(rotations: torch.Tensor) -> np.ndarray:
    """``(N,)`` radians: the in-plane angle of each pose ``rotations (N, 3, 3)`` (image → volume frame)
    relative to the first, ``α_i`` with ``R_0ᵀ R_i = R_z(α_i)`` — exact for one view (``R_i = R_v R_z(ψ_i)``,
    ``α_i = ψ_i − ψ_0``), where Euler angles are degenerate at tilt 0."""
    rel = rotations[:1].transpose(-1, -2).double() @ rotations.double()
    return torch.atan2(rel[:, 1, 0], rel[:, 0, 0]).numpy()

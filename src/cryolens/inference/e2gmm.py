"""E2GMM's model (Chen & Ludtke 2021; EMAN2 ``e2gmm_refine_new.py``; docs/METHODS.md "E2GMM"): a Gaussian
mixture whose centres and amplitudes move with ``z`` (a :class:`~cryolens.volumes.gaussian_mixture.
GaussianMixtureVolume` with a :class:`~cryolens.volumes.mixture_decoder.MixtureDecoder`), and an encoder that
does not see the image but, per image, the gradient of the loss with respect to the neutral mixture.

- **Predicted image** (:func:`predicted_transforms`): the mixture's exact real-space projection at the
  image's pose, transformed (centred FFT), shifted and multiplied by the CTF (the projector forward model in
  Fourier space, :func:`~cryolens.imaging.forward.shift_and_ctf`).
- **Encoder input** (:func:`gradient_features`): for every image, the gradient of its FRC loss
  (:func:`~cryolens.inference.frc.frc_loss`) with respect to every centre, amplitude and width of the
  *neutral* mixture, computed once before training for two ring bands (``lo … hi/2`` and ``lo … hi``, as
  EMAN2 concatenates the gradients of its two Fourier radii); each kind of parameter (centres, amplitudes,
  widths) is divided by its global std over all images (EMAN2 divides everything by one std; our kinds
  have different units).
- **Encoder** (:class:`GradientEncoder`): 3 × 512 ReLU, dropout 0.3, batch norm, a linear layer to ``z``
  initialised at N(0, 10⁻⁶) (EMAN2 ``build_encoder``).
- **Loss** (:class:`E2GMMModel`): ``−mean FRC`` over the band at ``z + ε`` with ``ε ~ N(0, noise²)`` in
  training (a fixed-variance "variational" autoencoder, no KL) plus ``radius_weight · mean max(‖z‖ − 1, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..imaging.fft import fft2_centered
from ..imaging.forward import shift_and_ctf
from ..imaging.gaussian import mixture_projections
from ..io.particles import Particles
from ..volumes.gaussian_mixture import GaussianMixtureVolume
from ..volumes.mixture_decoder import relu_trunk
from .engine import ParticleBatches, to_device
from .frc import frc_loss, latent_radius_penalty


def predicted_transforms(volume: GaussianMixtureVolume, rotations: torch.Tensor, z: torch.Tensor | None,
                         shifts: torch.Tensor | None, ctf, pixel_size: float) -> torch.Tensor:
    """Centred image transforms ``(B, D, D)`` complex of the mixture at ``z (B, L)`` seen under ``rotations
    (B, 3, 3)`` (image → volume frame), shifted by ``shifts (B, 2)`` px and multiplied by the CTF."""
    return shift_and_ctf(fft2_centered(volume.project(rotations, z).float()), shifts, ctf, pixel_size)


def _batch_gradients(volume: GaussianMixtureVolume, batch: dict, bands: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``(B, F)`` per-image gradients of the FRC loss over each band w.r.t. the neutral centres ``(N, 3)``,
    amplitudes ``(N,)`` and widths ``(N,)``, laid out ``[centres of every band, amplitudes ..., widths ...]``."""
    px = volume.pixel_size
    b = batch["image"].shape[0]
    c, a, s = (t.detach().float().expand(b, *t.shape[1:]).clone().requires_grad_(True) for t in volume.params(None))
    proj = mixture_projections(c / px, s / px, a, batch["rotation"].float(), volume.box_size)
    pred = shift_and_ctf(fft2_centered(proj), batch.get("shift"), batch.get("ctf"), px)
    obs = fft2_centered(batch["image"].float())
    grads = []
    for i, (lo, hi) in enumerate(bands):
        loss = frc_loss(pred, obs, lo, hi).sum()  # image i's loss depends on its own copy only
        grads.append(torch.autograd.grad(loss, (c, a, s), retain_graph=i + 1 < len(bands)))
    return torch.cat([g[k].reshape(b, -1) for k in range(3) for g in grads], dim=1)


@torch.no_grad()
def _normalise_kinds(features: torch.Tensor, n: int, n_bands: int, rows: int = 4096) -> torch.Tensor:
    """Each kind (centres: ``3N·bands`` columns, amplitudes and widths: ``N·bands``) divided by its global std,
    in place (the mean and the std accumulated in float64 over ``rows`` rows at a time, so no copy of the
    ``(N_images, F)`` table is made). Returns ``features``."""
    start = 0
    for size in (3 * n * n_bands, n * n_bands, n * n_bands):
        part = features[:, start:start + size]
        chunks = [part[r:r + rows] for r in range(0, part.shape[0], rows)]
        mean = sum(float(c.double().sum()) for c in chunks) / part.numel()
        var = sum(float((c.double() - mean).square().sum()) for c in chunks) / max(part.numel() - 1, 1)
        part.div_(max(var ** 0.5, 1e-20))
        start += size
    return features


def gradient_features(volume: GaussianMixtureVolume, particles: Particles, bands: Sequence[tuple[int, int]],
                      device=None, batch_size: int = 64) -> torch.Tensor:
    """E2GMM's encoder input ``(N_images, F)`` float32 on ``device``, ``F = 5 · N_gaussians · len(bands)``
    (module docstring), in particle (STAR) order, written into one preallocated table. Needs known poses."""
    device = torch.device(device or "cpu")
    data = ParticleBatches(particles)
    out = torch.empty(len(particles), 5 * volume.n_gaussians * len(bands), device=device)
    for s in range(0, len(particles), batch_size):
        rows = list(range(s, min(s + batch_size, len(particles))))
        batch = to_device(data[rows], device)
        with torch.enable_grad():
            out[s:s + len(rows)] = _batch_gradients(volume, batch, bands).detach()
    return _normalise_kinds(out, volume.n_gaussians, len(bands))


class GradientEncoder(nn.Module):
    """``features (B, F) → z (B, L)`` (module docstring): EMAN2's ``build_encoder`` (dense variant)."""

    def __init__(self, n_in: int, zdim: int, layers: int = 3, hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        self.trunk = relu_trunk(n_in, layers, hidden, dropout, batchnorm=True)
        self.out = nn.Linear(int(hidden) if int(layers) > 0 else int(n_in), int(zdim))
        nn.init.normal_(self.out.weight, 0.0, 1e-3)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(features.float()))


class E2GMMModel(nn.Module):
    """Mixture volume with its decoder, the gradient encoder and E2GMM's loss (module docstring).
    ``forward(batch) → {"loss", "frc", "radius"}`` (the engine's contract; ``frc``: the mean FRC over the
    band, higher is better). Call :meth:`set_features` with :func:`gradient_features` before training."""

    def __init__(self, volume: GaussianMixtureVolume, encoder: GradientEncoder, band: tuple[int, int],
                 z_noise: float = 0.1, radius_weight: float = 10.0):
        super().__init__()
        self.volume, self.encoder = volume, encoder
        self.band, self.z_noise, self.radius_weight = (int(band[0]), int(band[1])), float(z_noise), float(radius_weight)
        self.register_buffer("features", torch.zeros(0, 0), persistent=False)  # recomputed, not checkpointed

    def set_features(self, features: torch.Tensor) -> None:
        """The encoder inputs ``(N_images, F)`` of every image (particle order)."""
        self.features = features.float().to(self.features.device)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        z = self.encoder(self.features[batch["index"].to(self.features.device)])
        radius = latent_radius_penalty(z).mean()
        if self.training and self.z_noise > 0:
            z = z + self.z_noise * torch.randn_like(z)
        pred = predicted_transforms(self.volume, batch["rotation"], z, batch.get("shift"), batch.get("ctf"),
                                    self.volume.pixel_size)
        frc = frc_loss(pred, fft2_centered(batch["image"].float()), *self.band).mean()
        return {"loss": frc + self.radius_weight * radius, "frc": -frc.detach(), "radius": radius.detach()}

    @torch.no_grad()
    def latents(self, batch_size: int = 1024) -> np.ndarray:
        """``(N_images, L)`` float32 ``z`` of every image (eval mode: no noise, no dropout)."""
        was = self.training
        self.eval()
        z = torch.cat([self.encoder(self.features[s:s + batch_size]).float().cpu()
                       for s in range(0, self.features.shape[0], batch_size)])
        self.train(was)
        return z.numpy().astype(np.float32)

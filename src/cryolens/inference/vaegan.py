"""A 2D VAE-GAN on particle images (CryoVAEGAN, Miolane et al. 2020; docs/METHODS.md), on the one engine.

Model (:class:`VAEGAN`): a CNN encoder ``image → (μ, log σ²)`` of a generic latent ``z`` (``L`` dims;
:class:`~cryolens.inference.encoders.CNNEncoder`), a decoder ``z → image`` (:class:`ImageDecoder`) with a
learned scale ``s`` (a log-variance of the pixels) and a discriminator (the CNN
:class:`~cryolens.inference.adversarial.Critic`) that tells real images from reconstructions and from
decodes of prior draws ``z ~ N(0, I)``. Per image, with ``P = D²`` pixels::

    recon = Σ_pixels (x − x̂)² / (2 e^s) + P s / 2        (Gaussian with a learned scale)
    loss  = (recon + β · KL(q(z|x) ‖ N(0, I))) / P + γ · [ℓ(D(x̂), 1) + ℓ(D(decode(z_prior)), 1)] / 2

with ``ℓ`` the logistic loss (binary cross-entropy on logits) and ``x̂`` the decode of ``z ~ q(z|x)``. Inside
``D`` (here and in the discriminator's loss) every decode is a draw of the decoder's Gaussian, ``x̂ + e^{s/2} ε``,
not its smooth mean, which a discriminator tells from a noisy real image at once; the discriminator's layers are
spectrally normalised (``spectral_norm``) so that its logits cannot run away. The
adversarial terms train the decoder only (their ``x̂`` is decoded from a detached ``z``), as in Larsen et al.'s
VAE-GAN (2016): reaching the encoder, a discriminator that wins pushes the latent to whatever fools it and the
latent forgets the image (measured: benchmarks/RESULTS.md, "cryovaegan"). The discriminator is trained on
``ℓ(D(x), 1) + [ℓ(D(x̂), 0) + ℓ(D(decode(z_prior)), 0)] / 2`` with an Adam of its own, one step before each
engine step (the engine's ``before_step`` hook, optimiser checkpointed through ``inner_optimizers``).
Images are divided by ``norm`` (the data scale). The authors' code scores pixels with a Bernoulli
cross-entropy over ``exp(scale)`` plus ``2·scale``, for images in [0, 1]; cryo-EM images are signed and
unbounded, so the Gaussian with a learned scale stands in for it.

:func:`encode_all` gives ``μ`` of every image; :func:`latent_readout` reads the in-plane angle (the circle that a
spectral embedding of ``μ`` finds: :func:`circular_coordinate`) and a defocus coordinate (the latent's linear
defocus axis, cross-fitted to the dataset's defocus) off the latents.
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
    ``dec_channels``, ``hidden``, ``critic_channels``, ``critic_max_channels``, ``spectral_norm`` (the
    discriminator's layers spectrally normalised, Miyato et al. 2018), ``lr`` (the discriminator's Adam too) and
    ``betas``. norm: the data scale."""

    def __init__(self, box_size: int, config: Any, norm: float = 1.0):
        super().__init__()
        self.zdim, self.beta, self.gan_weight = int(config.zdim), float(config.beta), float(config.gan_weight)
        self.encoder = CNNEncoder(box_size, self.zdim, int(config.enc_channels), int(config.hidden))
        self.decoder = ImageDecoder(box_size, self.zdim, int(config.dec_channels), int(config.hidden))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.critic = Critic(box_size, int(config.critic_channels), int(config.critic_max_channels))
        if bool(config.spectral_norm):
            for m in self.critic.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(m)
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
        """``(μ, log σ², z ~ q(z|x), a draw of the decoder's Gaussian at a prior z)`` for scaled images ``x``."""
        mu, logvar = self.encoder(hartley2(x))
        z = mu + torch.randn(mu.shape).to(mu.device) * torch.exp(0.5 * logvar)
        prior = self._sample(self.decoder(torch.randn(mu.shape).to(mu.device)))
        return mu, logvar, z, prior

    def _sample(self, mean: torch.Tensor) -> torch.Tensor:
        """A draw of the decoder's Gaussian ``mean + e^{s/2} ε``: what the discriminator is shown."""
        return mean + torch.exp(0.5 * self.log_scale) * torch.randn(mean.shape).to(mean.device)

    def before_step(self, batch: dict, trainer: Any) -> dict[str, torch.Tensor]:
        """One discriminator step: real images against reconstructions and prior decodes."""
        x = batch["image"] / self.norm
        with torch.no_grad():
            _, _, z, prior = self._decodes(x)
            recon = self._sample(self.decoder(z))
        loss = _logistic(self.critic(x), 1.0) + 0.5 * (_logistic(self.critic(recon), 0.0)
                                                      + _logistic(self.critic(prior), 0.0))
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        return {"discriminator": loss.detach()}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["image"] / self.norm
        mu, logvar, z, prior = self._decodes(x)
        recon = self.decoder(z)
        p = x.shape[-1] * x.shape[-2]
        rec = ((x - recon).square().sum((-2, -1)) / (2 * torch.exp(self.log_scale)) + p * self.log_scale / 2).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        # the adversarial terms train the decoder only (Larsen et al. 2016): through z they would reach the encoder
        adv = 0.5 * (_logistic(self.critic(self._sample(self.decoder(z.detach()))), 1.0)
                     + _logistic(self.critic(prior), 1.0))
        return {"loss": (rec + self.beta * kl) / p + self.gan_weight * adv, "recon": rec / p, "kl": kl,
                "adversarial": adv, "log_scale": self.log_scale.detach()}


@torch.no_grad()
def encode_all(model: VAEGAN, particles: Particles, device, batch_size: int = 256) -> np.ndarray:
    """``μ`` ``(N, L)`` float32 of every image, in STAR order."""
    model.eval()
    out = [model.encode(images.to(device))[0].cpu() for _, images in iterate_batches(particles, batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def circular_coordinate(z: np.ndarray, n_neighbors: int = 10, n_components: int = 6, max_points: int = 20000,
                        seed: int = 0) -> tuple[np.ndarray, tuple[int, int], float, np.ndarray]:
    """A circle's angle read off latents ``z (N, L)`` without labels: the spectral embedding (Laplacian
    eigenmaps of the ``n_neighbors``-nearest-neighbour graph, ``n_components`` coordinates) of the centred
    latents; of every pair of its coordinates, the one whose points lie closest to a circle (smallest
    coefficient of variation of the radius: a closed curve's first Laplacian pair is ``(cos θ, sin θ)`` of its
    arc length θ); the angle ``atan2`` of that pair, radians ``(N,)``. Above ``max_points`` a random subset is
    embedded and the other points take the mean of their ``n_neighbors`` nearest embedded points' pair.
    Returns ``(angle, (i, j), cv, xy)``: the pair chosen, its radius's coefficient of variation and the points'
    coordinates in it ``(N, 2)`` (the circle a user can look at)."""
    from sklearn.manifold import SpectralEmbedding
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(z, dtype=np.float64)
    x = x - x.mean(0)
    keep = np.arange(len(x))
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    emb = SpectralEmbedding(n_components=min(n_components, len(keep) - 2), affinity="nearest_neighbors",
                            n_neighbors=n_neighbors, random_state=seed).fit_transform(x[keep])
    pairs = [(i, j) for i in range(emb.shape[1]) for j in range(i + 1, emb.shape[1])]
    radii = [np.hypot(emb[:, i], emb[:, j]) for i, j in pairs]
    cvs = [r.std() / r.mean() for r in radii]
    k = int(np.argmin(cvs))
    xy = np.zeros((len(x), 2))
    xy[keep] = emb[:, list(pairs[k])]
    rest = np.setdiff1d(np.arange(len(x)), keep)
    if len(rest):
        _, idx = NearestNeighbors(n_neighbors=n_neighbors).fit(x[keep]).kneighbors(x[rest])
        xy[rest] = emb[:, list(pairs[k])][idx].mean(1)
    return np.arctan2(xy[:, 1], xy[:, 0]), pairs[k], float(cvs[k]), xy


def latent_readout(z: np.ndarray, defocus: np.ndarray | None = None) -> dict[str, Any]:
    """Read-outs of latents ``z (N, L)`` (``L ≥ 2``): ``pcs (N, L)`` principal-component scores, ``angle (N,)``
    radians (the in-plane angle up to an offset and a direction, when the latent holds it as a closed curve:
    :func:`circular_coordinate`), ``angle_circularity`` (its radius's coefficient of variation: near 0 for a
    circle), ``angle_pair`` and ``angle_plane (N, 2)`` (the spectral pair and the points in it), and with
    ``defocus (N,)`` Å the latent's defocus axis: the least-squares linear read-out
    ``defocus ≈ w · z + b``, cross-fitted on two interleaved halves (each half's coordinate from the weights
    fitted on the other, so the score is out of sample): ``defocus_coordinate (N,)`` Å, ``defocus_spearman``
    (its Spearman ρ with the defocus) and ``defocus_axis (L,)`` (the unit direction ``w/‖w‖`` fitted on all)."""
    from scipy.stats import spearmanr

    x = np.asarray(z, dtype=np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    angle, pair, cv, xy = circular_coordinate(x)
    out: dict[str, Any] = {"pcs": x @ vt.T, "angle": angle, "angle_circularity": cv, "angle_pair": pair,
                           "angle_plane": xy}
    if defocus is not None:
        d = np.asarray(defocus, dtype=np.float64)
        design = np.c_[x, np.ones(len(x))]
        coordinate = np.empty(len(x))
        for half in (0, 1):
            fit = np.arange(len(x)) % 2 != half
            coordinate[~fit] = design[~fit] @ np.linalg.lstsq(design[fit], d[fit], rcond=None)[0]
        w = np.linalg.lstsq(design, d, rcond=None)[0][:-1]
        out.update(defocus_coordinate=coordinate, defocus_spearman=float(spearmanr(coordinate, d)[0]),
                   defocus_axis=w / max(np.linalg.norm(w), 1e-30))
    return out


def circular_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """|Fisher–Lee circular correlation ρ_T| of angles ``a``, ``b`` ``(N,)`` radians: ``det(S_ab) /
    sqrt(det S_aa · det S_bb)`` with ``S`` the (uncentred) second moments of the unit vectors ``(cos, sin)``; 1
    for ``b = ±a + c``, invariant to rotating either. Unlike Jammalamadaka–SenGupta's coefficient it needs no
    mean direction, which uniformly spread angles (an in-plane angle) do not have."""
    def unit(t: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(t), np.sin(t)], 1)

    ua, ub = unit(np.asarray(a, float)), unit(np.asarray(b, float))
    return float(abs(np.linalg.det(ua.T @ ub)) / np.sqrt(np.linalg.det(ua.T @ ua) * np.linalg.det(ub.T @ ub)))


def inplane_angles(rotations: torch.Tensor) -> np.ndarray:
    """``(N,)`` radians: the in-plane angle of each pose ``rotations (N, 3, 3)`` (image → volume frame)
    relative to the first, ``α_i`` with ``R_0ᵀ R_i = R_z(α_i)`` — exact for one view (``R_i = R_v R_z(ψ_i)``,
    ``α_i = ψ_i − ψ_0``), where Euler angles are degenerate at tilt 0."""
    rel = rotations[:1].transpose(-1, -2).double() @ rotations.double()
    return torch.atan2(rel[:, 1, 0], rel[:, 0, 0]).numpy()

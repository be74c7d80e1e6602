"""CryoFold's model (Zhong, Lerer, Davis & Berger 2021, arXiv 2107.01331; docs/METHODS.md "CryoFold"): a
residue-level Gaussian mixture built from an atomic model, whose centres a decoder moves with ``z``, ``z``
inferred by an amortized VAE encoder, and structure restraints on the moved centres. Poses and CTFs known.

Composition: :class:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume` (one Gaussian per residue,
base fixed) with a :class:`~cryolens.volumes.mixture_decoder.MixtureDecoder` (centres only, no dropout or
batch norm) × cryoDRGN's :class:`~cryolens.inference.encoders.MLPEncoder` ``q(z | image)`` × the Gaussian
likelihood on the Hartley lattice (:func:`~cryolens.inference.losses.image_mse`: the images divided by the
std of their Hartley transforms, the prediction — the exact projection of the mixture times the CTF —
multiplied by one learned scale ``e^{log_scale}``) + ``β`` KL / P (cryoDRGN's scaling) + the weighted
structure terms of :class:`~cryolens.inference.structure_losses.StructureRestraints` (Å², batch means).

Engine contract: ``forward(batch) → {"loss", "mse", "kl", <each structure term>}``
(:meth:`CryoFoldModel.vae_loss`); :meth:`CryoFoldModel.posterior` and ``zdim`` / ``table`` make
:func:`~cryolens.inference.latent_model.infer_latents` work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..volumes.gaussian_mixture import GaussianMixtureVolume
from ..volumes.lattice import SliceLattice, fourier_to_hartley
from .e2gmm import predicted_transforms
from .encoders import MLPEncoder
from .losses import centered_hartley, image_mse, kl_standard_normal, reparametrize
from .structure_losses import StructureRestraints, pair_distances


class CryoFoldModel(nn.Module):
    """Mixture volume with its decoder, an image encoder and the VAE + structure loss (module docstring).
    beta: weight of the KL term (per lattice pixel)."""

    def __init__(self, volume: GaussianMixtureVolume, restraints: StructureRestraints, enc_layers: int = 3,
                 enc_dim: int = 256, beta: float | None = None):
        super().__init__()
        self.volume, self.restraints = volume, restraints
        self.zdim, self.table = volume.zdim, None
        self.lattice = SliceLattice(volume.box_size)
        self.encoder = MLPEncoder(self.lattice, self.zdim, enc_layers, enc_dim)
        self.beta = 1.0 / self.zdim if beta is None else float(beta)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("norm", torch.ones(()))

    def _lattice(self, device, lattice: SliceLattice | None = None) -> SliceLattice:
        """``lattice`` (None: the model's) on ``device``, moved there once."""
        lat = self.lattice if lattice is None else lattice
        if lat.pixels.device != device:
            lat.to(device)
        return lat

    def targets(self, batch: dict) -> torch.Tensor:
        """Centred, normalised Hartley images ``(B, D, D)``."""
        return centered_hartley(batch["image"], batch.get("shift")) / self.norm

    def posterior(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, logvar)`` ``(B, L)`` of ``q(z | image)``."""
        lat = self._lattice(batch["image"].device)
        return self.encoder(lat.scatter(lat.gather(self.targets(batch))))

    def predicted(self, batch: dict, z: torch.Tensor | None, rotations: torch.Tensor | None = None,
                  shifts: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, P)`` predicted Hartley values on the lattice (unscaled, normalised units) at ``z``, under
        ``rotations`` (default the batch's) shifted by ``shifts`` px (default none: the target is centred)."""
        lat = self._lattice(batch["image"].device)
        rot = batch["rotation"] if rotations is None else rotations
        f = predicted_transforms(self.volume, rot, z, shifts, batch.get("ctf"), self.volume.pixel_size)
        return lat.gather(fourier_to_hartley(f)) / self.norm

    @torch.no_grad()
    def set_scale(self, batch: dict) -> float:
        """Data normalisation and the least-squares scale of the base model on ``batch`` (a sample of images):
        ``norm`` = std of their Hartley transforms, ``e^{log_scale} = Σ p·y / Σ p²`` at ``z = None``."""
        self.norm.fill_(float(centered_hartley(batch["image"], batch.get("shift")).std()))
        lat = self._lattice(batch["image"].device)
        p, y = self.predicted(batch, None), lat.gather(self.targets(batch))
        scale = float((p * y).sum() / (p * p).sum().clamp_min(1e-20))
        self.log_scale.fill_(float(torch.log(torch.tensor(abs(scale) + 1e-20))))
        return scale

    def vae_loss(self, batch: dict, rotations: torch.Tensor | None = None, shifts: torch.Tensor | None = None,
                 errors: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The loss terms (module docstring) of a batch seen under ``rotations`` and ``shifts`` (default: the
        batch's rotations, centred targets); ``errors``, if given, replaces that image error: ``z (B, L) →
        (B,)`` per-image error (AtomVAE's, under the poses its encoder gives)."""
        lat = self._lattice(batch["image"].device)
        mu, logvar = self.posterior(batch)
        z = reparametrize(mu, logvar) if self.training else mu
        if errors is None:
            pred = self.predicted(batch, z, rotations, shifts) * self.log_scale.exp()
            mse = image_mse(pred, lat.gather(self.targets(batch))).mean()
        else:
            mse = errors(z).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        rigid = getattr(self.volume.decoder, "rigid_centers", None)  # pull from the rigid placement, if any
        terms = self.restraints.terms(self.volume.params(z)[0], None if rigid is None else rigid(z))
        structure = self.restraints.total(terms).mean()
        return {"loss": mse + self.beta * kl / len(lat) + structure, "mse": mse.detach(), "kl": kl.detach(),
                **{k: v.mean().detach() for k, v in terms.items()}}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.vae_loss(batch)


@torch.no_grad()
def ca_outside_fraction(volume: GaussianMixtureVolume, z: torch.Tensor, pairs: torch.Tensor,
                        target: float = 3.8, tolerance: float = 0.3, batch_size: int = 256) -> float:
    """Fraction of the consecutive-residue distances ``pairs (P, 2)`` of the decoded models at every row of
    ``z (N, L)`` outside ``target ± tolerance`` Å."""
    if pairs.numel() == 0:
        return 0.0
    outside = 0
    for s in range(0, z.shape[0], batch_size):
        d = pair_distances(volume.params(z[s:s + batch_size])[0], pairs.to(z.device))
        outside += int(((d - target).abs() > tolerance).sum())
    return outside / (z.shape[0] * pairs.shape[0])

"""CryoFold (Zhong, Lerer, Davis & Berger 2021, "Exploring generative atomic models in cryo-EM
reconstruction", arXiv 2107.01331): a coarse-grained atomic model — one Gaussian per residue of a given
PDB/mmCIF (``model``) — whose residues a decoder moves with ``z``; ``z`` by a VAE; structure restraints on.
Poses and CTFs known.

Composition: :func:`~cryolens.volumes.gaussian_mixture.from_atoms` (per residue, one width ``sigma`` for all,
as the paper's shared radial basis function) × :class:`~cryolens.volumes.mixture_decoder.MixtureDecoder`
(centres only) × :class:`~cryolens.inference.cryofold.CryoFoldModel` (cryoDRGN's encoder, Gaussian likelihood,
KL, :class:`~cryolens.inference.structure_losses.StructureRestraints`), trained by the one engine. The paper
has no public code: the widths, decoder size, restraint weights and learning rate are our choices
(docs/METHODS.md "CryoFold").

Outputs: the map at the mean ``z``, ``z`` per image, ``decode``; metrics add ``ca_outside_3.8+-0.3`` (the
fraction of consecutive Cα distances of the decoded models at every image's ``z`` outside 3.8 ± 0.3 Å).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..inference.cryofold import CryoFoldModel, ca_outside_fraction
from ..inference.distributed import is_main
from ..inference.latent_model import infer_latents
from ..inference.structure_losses import StructureRestraints, consecutive_pairs
from ..inference.engine import ParticleBatches, to_device
from ..io.atomic import load_model_for_box, residue_index
from ..io.particles import Particles
from ..volumes.gaussian_mixture import from_atoms
from ..volumes.mixture_decoder import MixtureDecoder
from .config import option
from .registry import MethodOutputs
from .training import TrainingConfig, run_summary, train


@dataclass(frozen=True)
class CryoFoldConfig(TrainingConfig):
    """Options of cryofold (our choices where the paper is silent, docs/METHODS.md)."""

    model: str = option("", "atomic model (PDB/mmCIF) of one conformation: the base of the residue Gaussians")
    lr: float = option(1e-4, "learning rate of Adam")
    zdim: int = option(8, "dimension of the latent z")
    beta: float | None = option(None, "weight of the KL term (none: 1/zdim)")
    enc_layers: int = option(3, "residual blocks of the encoder MLP")
    enc_dim: int = option(256, "width of the encoder MLP")
    dec_layers: int = option(3, "hidden layers of the decoder MLP")
    dec_dim: int = option(256, "width of the decoder MLP")
    max_shift: float = option(20.0, "largest move of a residue from the base model, Å")
    sigma: float = option(0.0, "width of every residue's Gaussian, Å (0: 1.5 pixels)")
    w_ca: float = option(1e-2, "weight of the consecutive-Cα 3.8 Å term (per Å²)")
    w_pull: float = option(1e-3, "weight of the pull to the base model (per Å²)")
    w_rigid: float = option(0.0, "weight of local rigidity (per Å²)")
    rigid_cutoff: float = option(10.0, "residues closer than this in the base model keep their distance, Å")


def build(particles: Particles, config: CryoFoldConfig, device) -> CryoFoldModel:
    """The untrained model on ``device`` (the seed fixes the initial weights), its data scale and prediction
    scale set on the first ``norm_images`` images."""
    if not config.model:
        raise InputError("recipe cryofold: option model (a PDB/mmCIF file) is required")
    torch.manual_seed(config.seed)
    d, px = particles.box_size, particles.pixel_size
    atoms = load_model_for_box(config.model, d, px)
    decoder = MixtureDecoder(config.zdim, int(residue_index(atoms).max()) + 1, config.dec_layers, config.dec_dim,
                             dropout=0.0, batchnorm=False, amplitudes=False, shift_scale=config.max_shift)
    volume = from_atoms(atoms, d, px, per="residue", sigma=config.sigma or 1.5 * px, decoder=decoder,
                        zdim=config.zdim, learn=(), device=device)
    first = residue_index(atoms)
    keep = [int((first == g).nonzero()[0][0]) for g in range(volume.n_gaussians)]  # first atom of each residue
    pairs = consecutive_pairs(atoms.chain_ids[keep], atoms.residue_numbers[keep])
    restraints = StructureRestraints.from_base(volume.centers.detach().cpu(), ca_pairs=pairs,
                                               rigid_cutoff=config.rigid_cutoff if config.w_rigid > 0 else 0.0,
                                               w_ca=config.w_ca, w_pull=config.w_pull, w_rigid=config.w_rigid)
    model = CryoFoldModel(volume, restraints.to(device), config.enc_layers, config.enc_dim, config.beta).to(device)
    model.set_scale(to_device(ParticleBatches(particles)[list(range(min(len(particles), config.norm_images)))],
                              device))
    return model


def fit(particles: Particles, known, run, config: CryoFoldConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``cryofold`` (module docstring)."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: cryofold needs poses (rlnAngleRot/Tilt/Psi)")
    device = torch.device(device or "cpu")
    model = build(particles, config, device)
    train(model, particles, run, config, device, progress)
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    model.eval()
    z = infer_latents(model, particles, device)
    zt = torch.as_tensor(z, device=device)
    volume = model.volume
    summary, history = run_summary(run, config)
    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_mse", "images_per_s")}
    metrics["ca_outside_3.8+-0.3"] = ca_outside_fraction(volume, zt, model.restraints.ca_pairs)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        return volume.render(zb.to(device))

    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume.render(zt.mean(0, keepdim=True))[0].cpu(),
                         latents=z, decode=decode, metrics=metrics, history=history)

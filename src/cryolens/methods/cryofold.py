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

import numpy as np
import torch

from ..errors import InputError
from ..inference.cryofold import CryoFoldModel, ca_outside_fraction
from ..inference.distributed import is_main
from ..inference.latent_model import infer_latents
from ..inference.structure_losses import StructureRestraints, consecutive_pairs, neighbour_pairs
from ..inference.engine import ParticleBatches, to_device
from ..io.atomic import load_model_for_box, residue_index
from ..io.particles import Particles
from ..volumes.gaussian_mixture import GaussianMixtureVolume, from_atoms
from ..volumes.mixture_decoder import MixtureDecoder, RigidGroupDecoder
from .config import option
from .mixture_run import write_mixture_json
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
    motion: str = option("residues", "residues: each residue moves by at most max_shift (the paper); chains: each "
                         "chain also turns and translates as a rigid body, residues by max_shift on top, the pull "
                         "to the base measured from the chains' rigid placement")


def atomic_mixture(particles: Particles, config, device, per: str = "residue"
                   ) -> tuple[GaussianMixtureVolume, StructureRestraints]:
    """The mixture of ``config.model`` (one Gaussian per residue or per atom, width ``config.sigma``, a decoder of
    the centres) and its restraints (Cα pairs of consecutive residues; covalent bonds — pairs closer than 1.9 Å
    — of an all-atom model; pull; rigidity), on ``device``."""
    if not config.model:
        raise InputError("option model (a PDB/mmCIF file) is required")
    d, px = particles.box_size, particles.pixel_size
    atoms = load_model_for_box(config.model, d, px)
    groups = residue_index(atoms) if per == "residue" else np.arange(len(atoms))
    volume = from_atoms(atoms, d, px, per=per, sigma=config.sigma or 1.5 * px, learn=(), device=device)
    if config.motion not in ("residues", "chains"):
        raise InputError(f"option motion: {config.motion!r} is not one of residues, chains")
    if config.motion == "chains":  # one rigid group per chain: the chain of each Gaussian's first atom
        chain_of = np.unique(atoms.chain_ids, return_inverse=True)[1][np.unique(groups, return_index=True)[1]]
        decoder = RigidGroupDecoder(config.zdim, volume.centers.detach().cpu(), torch.as_tensor(chain_of),
                                    config.dec_layers, config.dec_dim, shift_scale=config.max_shift)
    else:
        decoder = MixtureDecoder(config.zdim, int(groups.max()) + 1, config.dec_layers, config.dec_dim,
                                 dropout=0.0, batchnorm=False, amplitudes=False, shift_scale=config.max_shift)
    volume.attach_decoder(decoder.to(device), config.zdim)
    ca = np.flatnonzero((atoms.atom_names == "CA") & (atoms.elements == "C"))
    ca = ca[np.unique(groups[ca], return_index=True)[1]]  # one Cα per Gaussian (the first altloc)
    pairs = torch.as_tensor(groups[ca])[consecutive_pairs(atoms.chain_ids[ca], atoms.residue_numbers[ca])]
    base = volume.centers.detach().cpu()
    restraints = StructureRestraints.from_base(
        base, ca_pairs=pairs, bonds=neighbour_pairs(base, 1.9) if per == "atom" else pairs,
        rigid_cutoff=config.rigid_cutoff if config.w_rigid > 0 else 0.0, w_ca=config.w_ca,
        w_bond=getattr(config, "w_bond", 0.0), w_pull=config.w_pull, w_rigid=config.w_rigid)
    return volume, restraints.to(device)


def build(particles: Particles, config: CryoFoldConfig, device) -> CryoFoldModel:
    """The untrained model on ``device`` (the seed fixes the initial weights), its data scale and prediction
    scale set on the first ``norm_images`` images."""
    torch.manual_seed(config.seed)
    volume, restraints = atomic_mixture(particles, config, device)
    model = CryoFoldModel(volume, restraints, config.enc_layers, config.enc_dim, config.beta).to(device)
    model.set_scale(first_images(particles, config.norm_images, device))
    return model


def first_images(particles: Particles, n: int, device) -> dict:
    """The engine's batch of the first ``n`` images, on ``device``."""
    return to_device(ParticleBatches(particles)[list(range(min(len(particles), n)))], device)


def trained(particles: Particles, run, config: CryoFoldConfig, device, progress: bool, recipe: str
            ) -> tuple[CryoFoldModel, np.ndarray] | None:
    """Build, train (the one engine) and evaluate the model of ``recipe`` (``model.json`` written); returns the model
    and every image's ``z`` ``(N, L)`` on the main process, None on the others. Poses are required."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: {recipe} needs poses (rlnAngleRot/Tilt/Psi)")
    model = build(particles, config, device)
    if is_main():
        write_mixture_json(run, recipe, model.volume, len(particles), config)
    train(model, particles, run, config, device, progress)
    if not is_main():
        return None
    model.eval()
    return model, infer_latents(model, particles, device)


def fit(particles: Particles, known, run, config: CryoFoldConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``cryofold`` (module docstring)."""
    device = torch.device(device or "cpu")
    done = trained(particles, run, config, device, progress, "cryofold")
    if done is None:
        return MethodOutputs(pixel_size=particles.pixel_size)
    model, z = done
    zt = torch.as_tensor(z, device=device)
    volume = model.volume
    summary, history = run_summary(run, config)
    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_mse", "images_per_s")}
    metrics["ca_outside_3.8+-0.3"] = ca_outside_fraction(volume, zt, model.restraints.ca_pairs)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        return volume.render(zb.to(device))

    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume.render(zt.mean(0, keepdim=True))[0].cpu(),
                         latents=z, decode=decode, metrics=metrics, history=history,
                         decode_models=lambda zb: volume.atomic_models(zb.to(device)))

"""Multi-body: the chains of a given atomic model as rigid bodies whose motions a VAE learns from the images,
then every body reconstructed from *all* the images in its own frame — RELION's multi-body reconstruction
(Nakane, Kimanius, Lindahl & Scheres 2018, eLife 7:e36861) with the bodies' motions learned by CryoFold's
model instead of searched per image, and no signal subtraction. Poses and CTFs known.

Why: a domain that turns through a large angle (the hetero benchmark's 180° swing) cannot be followed by a
bounded per-residue move, and a reconstruction per state gets only the few images of that state; here each
chain moves as a rigid body (:class:`~cryolens.volumes.mixture_decoder.RigidGroupDecoder`, residues by
``max_shift`` on top) and each chain's map is back-projected from every image seen in that chain's frame.

Composition: :func:`~cryolens.methods.cryofold.build` with ``motion="chains"`` trained by the one engine; then,
against the bodies back-projected under the current motions (:func:`~cryolens.inference.multibody.body_poses`,
:func:`~cryolens.methods.backprojection.backproject` per chain, weighted by
:func:`~cryolens.inference.multibody.body_weights`): which bodies each image shows
(:func:`~cryolens.inference.multibody.best_presence`, option ``presence``), each image's motion among candidate
latents and the bodies left in place (:func:`~cryolens.inference.multibody.best_motions`,
:func:`~cryolens.inference.multibody.most_probable`, option ``search``), presence again, each body back-projected
after each step from the images that show it. Per-image maps by :func:`~cryolens.inference.multibody.moved_maps`
from latent rows ``[z, moves, presence per body]`` (:func:`~cryolens.inference.multibody.latent_motions`).
Defaults (30 epochs, Adam 10⁻³) are ours (docs/METHODS.md "Multi-body"). Outputs as cryofold's, plus
``bodies/body_NN.mrc`` (the weighted body maps, base frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputError
from ..inference.multibody import (best_motions, best_presence, body_poses, body_weights, latent_models, latent_motions,
                                   most_probable, moved_maps)
from ..io.particles import Particles
from .backprojection import backproject
from .config import option
from .cryofold import CryoFoldConfig, trained
from .registry import MethodOutputs
from .training import run_summary


@dataclass(frozen=True)
class MultibodyConfig(CryoFoldConfig):
    """Options of multibody (cryofold's, with rigid chains; our defaults, docs/METHODS.md "Multi-body")."""

    motion: str = option("chains", "chains: each chain of the model is a rigid body (the only choice here)")
    epochs: int = option(30, "passes over the data (epochs)")
    lr: float = option(1e-3, "learning rate of Adam")
    softness: float = option(0.0, "width of the boundary between two bodies' regions, Å (0: two pixels)")
    search: int = option(48, "candidate latents searched per image against the body maps: this many along the first "
                             "principal axis of z, over its range extended by search_extend on each side, plus every "
                             "5th image's latent (at most 100 of them) and the bodies left in place (0: no search)")
    search_extend: float = option(2.5, "how far the searched axis runs beyond the learned latents, in their range")
    search_resolution: float = option(12.0, "the search compares frequencies up to 1 / this, Å")
    pad: int = option(2, "padding factor of the bodies' back-projections")
    presence: bool = option(True, "search which bodies each image shows (a subunit bound or not: every subset of up to "
                                  "12 bodies, else backward elimination), then back-project each body from the images "
                                  "that show it; before and after the motion search")


def body_maps(particles: Particles, decoder, z: np.ndarray, softness: float, pad: int, device,
              progress: bool, presence: np.ndarray | None = None) -> torch.Tensor:
    """``(G, D, D, D)`` the weighted body maps (base frame), each body back-projected under its motion at each
    image's latent row ``z`` (:func:`~cryolens.inference.multibody.latent_motions`) from every image, or from the
    images that show it (``presence (N, G)`` bool, else the rows' presence columns when they have them)."""
    rot, t, shown = latent_motions(decoder, torch.as_tensor(z, device=device))
    if presence is None and shown is not None:
        presence = shown.cpu().numpy() > 0.5
    weights = body_weights(decoder.base, decoder.groups, particles.box_size, particles.pixel_size,
                           softness or 2 * particles.pixel_size)
    maps = []
    for g in range(rot.shape[1]):
        r, s = body_poses(particles.rotations.to(device), None if particles.shifts is None else
                          particles.shifts.to(device), rot[:, g], t[:, g], decoder.origins[g], particles.pixel_size)
        seen = replace(particles, rotations=r.float().cpu(), shifts=s.float().cpu())
        if presence is not None and presence[:, g].any():
            seen = seen.subset(np.flatnonzero(presence[:, g]))
        maps.append(weights[g].cpu() * backproject(seen, pad=pad, device=device, progress=progress).volume)
    return torch.stack(maps)


def searched_latents(particles: Particles, decoder, maps: torch.Tensor, z: np.ndarray, config: MultibodyConfig,
                     device, presence: np.ndarray | None = None) -> np.ndarray:
    """``(N, L + 1)`` each image's most probable candidate (:func:`~cryolens.inference.multibody.best_motions`
    against the body maps ``maps``, :func:`~cryolens.inference.multibody.most_probable`) among those of
    ``config.search`` (its docstring) and the bodies left where the base model has them: ``z``, then 1 (moves) or
    0 (stays). presence: ``(N, G)`` bool, the bodies each image shows (default all)."""
    zc = z - z.mean(0)
    axis = np.linalg.svd(zc, full_matrices=False)[2][0]
    pc = zc @ axis
    span = pc.max() - pc.min()
    ts = np.linspace(pc.min() - config.search_extend * span, pc.max() + config.search_extend * span, config.search)
    moving = np.concatenate([z.mean(0)[None] + ts[:, None] * axis[None], z[::max(5, -(-len(z) // 100))]])
    cands = np.concatenate([np.c_[moving, np.ones(len(moving))], np.r_[z.mean(0), 0.0][None]]).astype(np.float32)
    rot, t, _ = latent_motions(decoder, torch.as_tensor(cands, device=device))
    shown = None if presence is None else torch.as_tensor(presence, dtype=maps.dtype)
    max_freq = min(0.5, particles.pixel_size / config.search_resolution)
    return cands[most_probable(best_motions(particles, maps, rot, t, decoder.origins, max_freq, device=device,
                                            presence=shown))]


def shown_bodies(particles: Particles, decoder, maps: torch.Tensor, z: np.ndarray, config: MultibodyConfig,
                 device) -> np.ndarray:
    """``(N, G)`` bool: the bodies each image shows (:func:`~cryolens.inference.multibody.best_presence`) against the
    body maps ``maps``, the bodies moved as each latent row of ``z`` says."""
    rot, t, _ = latent_motions(decoder, torch.as_tensor(z, device=device))
    max_freq = min(0.5, particles.pixel_size / config.search_resolution)  # as searched_latents
    return best_presence(particles, maps, rot, t, decoder.origins, max_freq, device=device).numpy()


def fit(particles: Particles, known, run, config: MultibodyConfig, device=None, progress=True) -> MethodOutputs:
    """Registry entry point of ``multibody`` (module docstring)."""
    if config.motion != "chains":
        raise InputError(f"option motion: multibody moves chains as rigid bodies, not {config.motion!r}")
    device = torch.device(device or "cpu")
    done = trained(particles, run, config, device, progress, "multibody")
    if done is None:
        return MethodOutputs(pixel_size=particles.pixel_size)
    model, z = done
    decoder, px = model.volume.decoder, particles.pixel_size
    z = np.c_[z, np.ones(len(z), z.dtype)]  # every body moves as the decoder says at z
    shown = np.ones((len(z), decoder.origins.shape[0]), bool)
    maps = body_maps(particles, decoder, z, config.softness, config.pad, device, progress).to(device)

    def rebuilt() -> torch.Tensor:  # every body back-projected from the images that show it, as they now move
        return body_maps(particles, decoder, z, config.softness, config.pad, device, progress, shown).to(device)

    if config.presence:  # which bodies, against bodies from all images
        shown = shown_bodies(particles, decoder, maps, z, config, device)
        maps = rebuilt()
    if config.search > 0:  # how they move, given those (the decoder extrapolates past the learned latents)
        z = searched_latents(particles, decoder, maps, z[:, :-1], config, device, shown)
        maps = rebuilt()
    if config.presence:  # which bodies again, against bodies from the images that show them
        shown = shown_bodies(particles, decoder, maps, z, config, device)
        maps = rebuilt()
    z = np.c_[z, shown].astype(np.float32)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        rot, t, present = latent_motions(decoder, zb.to(device))
        return moved_maps(maps, rot, t, decoder.origins, px, present)

    summary, history = run_summary(run, config)
    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_mse", "images_per_s")}
    mean = torch.as_tensor(z.mean(0, keepdims=True), device=device)
    return MethodOutputs(pixel_size=px, volume=decode(mean)[0].cpu(), latents=z, decode=decode, metrics=metrics,
                         history=history, decode_models=lambda zb: latent_models(model.volume, zb.to(device)),
                         extra_volumes={f"bodies/body_{g + 1:02d}": m.cpu() for g, m in enumerate(maps)})

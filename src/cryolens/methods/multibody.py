"""Multi-body: the chains of a given atomic model as rigid bodies whose motions a VAE learns from the images,
then every body reconstructed from *all* the images in its own frame — RELION's multi-body reconstruction
(Nakane, Kimanius, Lindahl & Scheres 2018, eLife 7:e36861) with the bodies' motions learned by CryoFold's
model instead of searched per image, and no signal subtraction. Poses and CTFs known.

Why: a domain that turns through a large angle (the hetero benchmark's 180° swing) cannot be followed by a
bounded per-residue move, and a reconstruction per state gets only the few images of that state; here each
chain moves as a rigid body (:class:`~cryolens.volumes.mixture_decoder.RigidGroupDecoder`, residues by
``max_shift`` on top) and each chain's map is back-projected from every image seen in that chain's frame.

Composition: :func:`~cryolens.methods.cryofold.build` with ``motion="chains"`` trained by the one engine;
each image's chain motions at its ``z``, then searched per image among candidate latents against the body maps
(:func:`~cryolens.inference.multibody.best_motions`, option ``search``);
:func:`~cryolens.inference.multibody.body_poses` and :func:`~cryolens.methods.backprojection.backproject` per chain,
weighted by
:func:`~cryolens.inference.multibody.body_weights`; per-image maps by
:func:`~cryolens.inference.multibody.moved_maps`. Defaults (30 epochs, Adam 10⁻³) are ours (docs/METHODS.md
"Multi-body"). Outputs as cryofold's, plus ``bodies/body_NN.mrc`` (the weighted body maps, base frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputError
from ..inference.multibody import best_motions, body_poses, body_weights, moved_maps
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
                             "5th image's latent (0: no search)")
    search_extend: float = option(2.5, "how far the searched axis runs beyond the learned latents, in their range")
    search_resolution: float = option(12.0, "the search compares frequencies up to 1 / this, Å")
    pad: int = option(2, "padding factor of the bodies' back-projections")


def body_maps(particles: Particles, decoder, z: np.ndarray, softness: float, pad: int, device,
              progress: bool) -> torch.Tensor:
    """``(G, D, D, D)`` the weighted body maps (base frame), each body back-projected from every image under
    its motion at that image's ``z``."""
    with torch.no_grad():
        rot, t, _ = decoder.rigid_moves(torch.as_tensor(z, device=device))
    weights = body_weights(decoder.base, decoder.groups, particles.box_size, particles.pixel_size,
                           softness or 2 * particles.pixel_size)
    maps = []
    for g in range(rot.shape[1]):
        r, s = body_poses(particles.rotations.to(device), None if particles.shifts is None else
                          particles.shifts.to(device), rot[:, g], t[:, g], decoder.origins[g], particles.pixel_size)
        seen = replace(particles, rotations=r.float().cpu(), shifts=s.float().cpu())
        maps.append(weights[g].cpu() * backproject(seen, pad=pad, device=device, progress=progress).volume)
    return torch.stack(maps)


def searched_latents(particles: Particles, decoder, maps: torch.Tensor, z: np.ndarray, config: MultibodyConfig,
                     device) -> np.ndarray:
    """``(N, L)`` each image's best latent among the candidates of ``config.search`` (its docstring), chosen by
    :func:`~cryolens.inference.multibody.best_motions` against the body maps ``maps``."""
    zc = z - z.mean(0)
    axis = np.linalg.svd(zc, full_matrices=False)[2][0]
    pc = zc @ axis
    span = pc.max() - pc.min()
    ts = np.linspace(pc.min() - config.search_extend * span, pc.max() + config.search_extend * span, config.search)
    cands = np.concatenate([z.mean(0)[None] + ts[:, None] * axis[None], z[::5]]).astype(np.float32)
    with torch.no_grad():
        rot, t, _ = decoder.rigid_moves(torch.as_tensor(cands, device=device))
    max_freq = min(0.5, particles.pixel_size / config.search_resolution)
    best = best_motions(particles, maps, rot, t, decoder.origins, max_freq, device=device)
    return cands[best.numpy()]


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
    maps = body_maps(particles, decoder, z, config.softness, config.pad, device, progress).to(device)
    if config.search > 0:  # the decoder extrapolates past the learned latents (a turn the VAE did not reach)
        z = searched_latents(particles, decoder, maps, z, config, device)
        maps = body_maps(particles, decoder, z, config.softness, config.pad, device, progress).to(device)

    def decode(zb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rot, t, _ = decoder.rigid_moves(zb.to(device))
            return moved_maps(maps, rot, t, decoder.origins, px)

    summary, history = run_summary(run, config)
    metrics = {k: summary.get(k) for k in ("epochs", "final_loss", "final_mse", "images_per_s")}
    mean = torch.as_tensor(z.mean(0, keepdims=True), device=device)
    return MethodOutputs(pixel_size=px, volume=decode(mean)[0].cpu(), latents=z, decode=decode, metrics=metrics,
                         history=history, decode_models=lambda zb: model.volume.atomic_models(zb.to(device)),
                         extra_volumes={f"bodies/body_{g + 1:02d}": m.cpu() for g, m in enumerate(maps)})

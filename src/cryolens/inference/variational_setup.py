"""Building and reading an FSTdiff model (:class:`~cryolens.inference.variational.VariationalReconstruction`):
its starting spectra, its pose posterior, and the per-image posterior summaries after training.

- :func:`image_power` — the power per Fourier component and shell of the normalised images. The starting
  noise power ``σ²`` is white, the median of the outer half of the shells (where the signal is weakest);
  the starting prior ``τ²(k)`` of a map started from nothing is the power above it divided by the CTF's
  mean square (:func:`signal_prior`). Both are then learned by the ELBO unless frozen.
- :func:`build_model` — the volume ``q(V)`` (mean from a start map, or zero), the pose posterior by ``pose``
  (``"variational"``: a table started at the given rotations; ``"amortized"``: an encoder; ``"known"``:
  none), the ELBO model, on the data scale.
- :func:`starting_poses` — the pose table's start: the metadata's rotations, random ones, or each image's
  mode searched against the start map (``start_poses=search``: a refinement from a map alone).
- :func:`pose_strategies` — the pose table's Gauss-Newton steps and global searches during training.
- :func:`pose_summaries` — per image the mean rotation and shift and their spreads: the rotational spread
  ``sqrt(Σ_j σ_j²)`` (degrees; the RMS geodesic angle of ``q(R)`` about its mean to second order) and the
  shift spread ``sqrt(Σ s²)`` (px).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered
from ..imaging.grids import radial_average, shell_index_2d
from ..imaging.rotations import random_rotations
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..volumes.variational import VariationalVoxelVolume
from .pose_encoder import PoseEncoder
from .variational import VariationalReconstruction
from .variational_laplace import VariationalPoseSteps, searched_modes
from .variational_pose import MAX_LOG_ROT_STD, AmortizedPosePosterior, VariationalPoseTable


def image_power(images: torch.Tensor) -> torch.Tensor:
    """``(D//2+1,)`` float32 mean ``|Y_f|²`` per shell of the centred transforms of ``images (B, D, D)``."""
    d = images.shape[-1]
    power = fft2_centered(images.double()).abs().square().mean(0)
    return radial_average(power, shell_index_2d(d).clamp_max(d // 2), d // 2 + 1).float()


def signal_prior(power: torch.Tensor, noise: torch.Tensor, particles: Particles, n_ctf: int = 256) -> torch.Tensor:
    """Starting ``τ²(k)`` ``(D//2+1,)`` per real coordinate of the map's transform: the images' power above
    the noise, ``(power − σ²) / (2 · mean C²)`` per shell (the slice theorem: an image coefficient is ``C``
    times a map coefficient), floored at 10⁻³ of its largest value."""
    d = particles.box_size
    c2 = torch.ones_like(power)
    if particles.ctf is not None:
        c = ctf_2d(particles.ctf[:n_ctf], d, particles.pixel_size, dtype=torch.float64)
        c2 = radial_average(c.square().mean(0), shell_index_2d(d).clamp_max(d // 2), d // 2 + 1).float()
    tau2 = (power - noise).clamp_min(0) / (2 * c2.clamp_min(1e-2))
    return tau2.clamp_min(1e-3 * float(tau2.max()))


def build_model(particles: Particles, options: Any, images: torch.Tensor, start_map: torch.Tensor | None,
                start_rotations: torch.Tensor | None) -> VariationalReconstruction:
    """The ELBO model (module docstring) for ``particles``. options: the recipe's (``pose``,
    ``rot_std_deg``, ``shift_std``, ``infer_shifts``, ``shift_prior_std``, ``pose_lr``, ``pose_spread_lr``,
    the encoder's ``enc_*``, ``max_shift``, and :func:`volume_model`'s). images: a sample of raw images (data
    scale and spectra). start_map: ``(D, D, D)`` in the images' units or None. start_rotations: ``(N, 3, 3)``
    for the pose table."""
    o, d, n = options, particles.box_size, len(particles)
    norm = float(images.std())
    rot_std, shift_std = math.radians(o.rot_std_deg), (o.shift_std if o.infer_shifts else None)
    poses = None
    if o.pose == "variational":
        shifts = particles.shifts if particles.shifts is not None else torch.zeros(n, 2)
        poses = VariationalPoseTable(start_rotations, shifts, rot_std, shift_std)
    elif o.pose == "amortized":
        encoder = PoseEncoder(d, o.enc_channels, o.enc_max_channels, 2, tuple(o.enc_hidden),
                              o.max_shift if o.infer_shifts else 0.0)
        encoder.set_scale(norm)
        poses = AmortizedPosePosterior(encoder, tuple(o.enc_hidden), rot_std, shift_std)
    model = volume_model(particles, o, images, start_map, poses, o.shift_prior_std, o.pose_lr or None)
    model.spread_lr = o.pose_spread_lr or None
    return model


def volume_model(particles: Particles, options: Any, images: torch.Tensor, start_map: torch.Tensor | None,
                 poses: torch.nn.Module | None = None, shift_prior_std: float = 2.0,
                 pose_lr: float | None = None) -> VariationalReconstruction:
    """``q(V)`` and the ELBO on the data scale (``norm`` the std of ``images``, a sample of raw images): the
    starting noise power white at the outer shells' power, ``τ²(k)`` from :func:`signal_prior`, the mean from
    ``start_map`` (images' units) or zero. options: ``init_logvar``, ``learn_prior``, ``learn_noise``,
    ``samples``, ``var_lr``, ``lr_decay``, ``expectation``. poses: the pose posterior, or None (poses given
    with each batch, or from outside: :meth:`VariationalReconstruction.given_pose_loss`)."""
    o, d = options, particles.box_size
    norm = float(images.std())
    power = image_power(images / norm)
    noise = power[d // 4:].median()  # white noise at the outer shells' power
    mean = None if start_map is None else start_map / norm
    volume = VariationalVoxelVolume(d, mean, o.init_logvar, signal_prior(power, noise, particles), o.learn_prior)
    model = VariationalReconstruction(volume, poses, len(particles), particles.pixel_size,
                                      noise.expand(d // 2 + 1).clone(), o.learn_noise, o.samples, shift_prior_std,
                                      pose_lr, o.var_lr or None, o.lr_decay, o.expectation == "analytic")
    model.norm.fill_(norm)
    return model


def starting_poses(particles: Particles, options: Any, start_map: torch.Tensor | None, device
                   ) -> tuple[Particles, torch.Tensor | None]:
    """``(particles to train on, start rotations (N, 3, 3) of the pose table or None)`` for ``pose`` variational
    or amortized: the particles lose their rotations; ``start_poses`` (``metadata``: theirs, random when there
    are none; ``random``; ``search``: each image's mode against ``start_map`` by
    :func:`~cryolens.inference.variational_laplace.searched_modes` with ``search_levels`` and ``max_shift`` — the
    particles then carry the searched shifts). The random draw is made for ``pose=variational`` only (an encoder
    has no table to start)."""
    o, rot = options, particles.rotations
    data = dataclasses.replace(particles, rotations=None)
    if o.start_poses == "search":
        if start_map is None:
            raise InputError("fstdiff: start_poses=search needs a start map (--set init_map=MAP.mrc)")
        rot, shifts = searched_modes(start_map, data, o.search_levels, o.max_shift, device)
        return dataclasses.replace(data, shifts=shifts), rot
    if o.pose == "variational" and (rot is None or o.start_poses == "random"):
        rot = random_rotations(len(particles), torch.Generator().manual_seed(o.seed))
    return data, rot


def search_epochs(options: Any) -> tuple[int, ...]:
    """The epochs (from 1) after which ``pose=variational`` searches again: ``pose_search_epochs``; when empty
    and the table was started by a search (``start_poses=search``: a map alone), after 30 % and 60 % of the
    ``epochs`` (the schedule measured in benchmarks/RESULTS.md: 6 and 12 of 20). ``[0]``: none."""
    o = options
    if o.pose_search_epochs or o.start_poses != "search":
        return tuple(int(e) for e in o.pose_search_epochs if int(e) > 0)
    return tuple(sorted({max(1, round(f * o.epochs)) for f in (0.3, 0.6)}))


def pose_strategies(options: Any) -> list[VariationalPoseSteps]:
    """The engine strategies of ``pose=variational`` (``pose_newton_every``, :func:`search_epochs`,
    ``search_levels``, ``max_shift``): a :class:`VariationalPoseSteps`, or none for the other pose families."""
    o, searches = options, search_epochs(options)
    if o.pose != "variational" or (o.pose_newton_every <= 0 and not searches):
        return []
    return [VariationalPoseSteps(o.pose_newton_every, searches, o.search_levels, o.max_shift)]


@torch.no_grad()
def pose_summaries(model: VariationalReconstruction, particles: Particles, device, batch_size: int = 256
                   ) -> SimpleNamespace:
    """Per image, in STAR order (CPU): ``rotations (N, 3, 3)`` and ``shifts (N, 2)`` px (the means),
    ``rot_spread_deg (N,)`` and ``shift_spread_px (N,)`` float32 (module docstring)."""
    n = len(particles)
    out = SimpleNamespace(rotations=torch.empty(n, 3, 3), shifts=torch.empty(n, 2),
                          rot_spread_deg=np.zeros(n, np.float32), shift_spread_px=np.zeros(n, np.float32))
    was = model.training
    model.eval()
    for idx, images in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        shifts = None if particles.shifts is None else particles.shifts[it].to(device)
        batch = {"index": it.to(device), "image": images.to(device), "shift": shifts}
        rot, log_rs, sh, log_ss = model.pose_posterior(batch)
        out.rotations[it], out.shifts[it] = rot.float().cpu(), sh.float().cpu()
        var = (2 * log_rs.clamp_max(MAX_LOG_ROT_STD)).exp().sum(-1)
        out.rot_spread_deg[idx] = np.degrees(var.sqrt().float().cpu().numpy())
        if log_ss is not None:
            out.shift_spread_px[idx] = (2 * log_ss).exp().sum(-1).sqrt().float().cpu().numpy()
    model.train(was)
    return out

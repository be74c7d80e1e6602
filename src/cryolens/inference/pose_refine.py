"""Modal pose refinement after amortized inference (cryoAI, CryoPoseNet's ``refine_poses``): every image's
pose replaced by the hierarchical search against a map, and optional gold-standard rounds.

Round 1 (:func:`refine_poses`): each pose by
:func:`~cryolens.inference.pose_search.hierarchical_search` against the trained map (2× oversampled;
``refine_base_level``, ``refine_levels``, ``refine_keep``; shifts within ``±max_shift`` px in steps of
``refine_shift_step``). Rounds 2 … ``refine_rounds`` (:func:`refine_poses_halves`): the images are
back-projected with the last poses into two half maps, and each half-set's images are searched again,
one level finer, against its own half map weighted per shell by ``sqrt(2 FSC / (1 + FSC))`` and
solvent-flattened (cryoSPARC's homogeneous refinement in outline). :func:`refine_rounds` runs the rounds.
:func:`refine_poses_by_latent` searches each image against the map of its
conformation (the k-means centre of its latent's group) for the heterogeneous recipes. This keeps the
recipe's own measured numbers; it is not the EM core's auto-refinement (whose search, priors and stopping
rule differ).

``settings``: an options object with ``refine_base_level``, ``refine_levels``, ``refine_keep``,
``refine_shift_step``, ``refine_rounds``, ``max_shift`` (px), ``pose_batch`` and ``seed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..imaging.fft import fft2_centered
from ..imaging.grids import flatten_solvent, shell_filter_volume
from ..imaging.slice import prepare_volume_ft
from ..io.dataset import iterate_batches
from ..io.particles import Particles, half_set_labels
from ..metrics.pose_error import pose_error_summary
from .pose_search import hierarchical_search
from .reconstruct import fsc_reference_weight


@torch.no_grad()
def refine_poses(volume: torch.Tensor, particles: Particles, settings: Any, device, indices=None,
                 n_levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Modal poses ``(rotations (M, 3, 3), shifts (M, 2) px)`` of the particles ``indices`` (default all,
    ``M = N``) by hierarchical search against ``volume (D, D, D)`` (module docstring; CTF from the
    metadata when present; ``n_levels`` overrides ``refine_levels``)."""
    vft = prepare_volume_ft(volume.to(device), pad=2)
    levels = int(settings.refine_levels) if n_levels is None else int(n_levels)
    rots, shifts = [], []
    for idx, images in iterate_batches(particles, int(settings.pose_batch), indices):
        ctf = None if particles.ctf is None else particles.ctf[torch.as_tensor(idx)].to(device)
        res = hierarchical_search(fft2_centered(images.to(device)), vft, ctf=ctf, pixel_size=particles.pixel_size,
                                  base_level=int(settings.refine_base_level), n_levels=levels,
                                  max_shift=float(settings.max_shift),
                                  shift_step=float(settings.refine_shift_step), keep=int(settings.refine_keep))
        rots.append(res.rotations.float().cpu())
        shifts.append(res.shifts.float().cpu())
    return torch.cat(rots), torch.cat(shifts)


def refine_poses_by_latent(render: Callable[[torch.Tensor], torch.Tensor], z: np.ndarray, particles: Particles,
                           settings: Any, device, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Modal poses of every image searched against the map of its own conformation rather than of the mean
    one: the latents ``z (N, L)`` split by k-means (scikit-learn, k-means++, 10 starts, ``settings.seed``)
    into ``clusters`` groups, and each group's images searched (:func:`refine_poses`) against
    ``render(centre (1, L))[0] (D, D, D)``, the map at its centre. ``clusters`` 1: every image against the map
    at the mean ``z``. Returns ``(rotations (N, 3, 3), shifts (N, 2) px)`` in input order."""
    n = len(particles)
    z = np.asarray(z, dtype=np.float64).reshape(n, -1)
    k = max(1, min(int(clusters), n))
    if k == 1:
        labels, centres = np.zeros(n, dtype=np.int64), z.mean(0, keepdims=True)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=10, random_state=int(settings.seed)).fit(z)
        labels, centres = km.labels_, km.cluster_centers_
    rots, shifts = torch.zeros(n, 3, 3), torch.zeros(n, 2)
    for c in range(k):
        idx = np.nonzero(labels == c)[0]
        if idx.size == 0:
            continue
        with torch.no_grad():
            reference = render(torch.as_tensor(centres[c:c + 1], dtype=torch.float32))[0]
        r, t = refine_poses(reference.detach().float(), particles, settings, device, idx)
        rots[torch.as_tensor(idx)], shifts[torch.as_tensor(idx)] = r, t
    return rots, shifts


def refine_poses_halves(halves: tuple[torch.Tensor, torch.Tensor], fsc_curve: np.ndarray, particles: Particles,
                        settings: Any, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One gold-standard round (module docstring): the images of half-set ``h``
    (:func:`~cryolens.io.particles.half_set_labels` with ``settings.seed``, the split of the back-projection)
    searched against ``halves[h] (D, D, D)`` weighted per shell by
    :func:`~cryolens.inference.reconstruct.fsc_reference_weight` of ``fsc_curve`` (the halves' FSC) and
    solvent-flattened outside a sphere of 0.4 D px, with ``refine_levels + 1`` levels. Returns
    ``(rotations (N, 3, 3), shifts (N, 2) px)``."""
    labels = half_set_labels(particles, int(settings.seed))
    weight = fsc_reference_weight(fsc_curve)
    n, d = len(particles), particles.box_size
    rots, shifts = torch.zeros(n, 3, 3), torch.zeros(n, 2)
    for h, half in enumerate(halves):
        idx = np.nonzero(labels == h)[0]
        if idx.size == 0:
            continue
        reference = flatten_solvent(shell_filter_volume(half.float(), weight), 0.4 * d)
        r, t = refine_poses(reference, particles, settings, device, idx, int(settings.refine_levels) + 1)
        rots[torch.as_tensor(idx)], shifts[torch.as_tensor(idx)] = r, t
    return rots, shifts


def refine_rounds(volume: torch.Tensor, particles: Particles, settings: Any, device,
                  backproject: Callable[..., Any]) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    """All ``refine_rounds`` rounds (module docstring) from ``volume (D, D, D)``. ``backproject(particles,
    device=, seed=, progress=)`` gives the half maps of the images with the last round's poses (an object
    with ``half1``, ``half2``, ``fsc`` and ``resolution`` Å). Returns ``(rotations (N, 3, 3), shifts (N, 2)
    px, {"refined_round1": rotations, …} of the earlier rounds, {resolution_halfmap_0143_refined_round1_A: …})``."""
    seed, rounds = int(settings.seed), max(1, int(settings.refine_rounds))
    rot, sh = refine_poses(volume, particles, settings, device)
    earlier, extra = {}, {}
    for k in range(2, rounds + 1):  # gold-standard rounds against the halves of the last round's poses
        earlier[f"refined_round{k - 1}"] = rot
        bp = backproject(dataclasses.replace(particles, rotations=rot, shifts=sh), device=device, seed=seed,
                         progress=False)
        extra[f"resolution_halfmap_0143_refined_round{k - 1}_A"] = bp.resolution
        rot, sh = refine_poses_halves((bp.half1, bp.half2), bp.fsc, particles, settings, device)
    return rot, sh, earlier, extra


def pose_error_metrics(rotations: dict[str, torch.Tensor], truth: torch.Tensor | None) -> dict:
    """Rotation errors of each named pose set against ``truth`` (when given; after global alignment and
    the mirror check, :func:`~cryolens.metrics.pose_error.pose_error_summary`): ``pose_error_<name>`` and
    ``median_rotation_error_<name>_deg``, JSON-ready."""
    if truth is None:
        return {}
    metrics = {}
    for name, r in rotations.items():
        metrics[f"pose_error_{name}"] = {k: v for k, v in pose_error_summary(r, truth).items() if k != "alignment"}
        metrics[f"median_rotation_error_{name}_deg"] = metrics[f"pose_error_{name}"]["median_deg"]
    return metrics

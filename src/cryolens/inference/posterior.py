"""The pose posterior: the E-step of :mod:`~cryolens.inference.estep` with one class (``K = 1``).

For each image ``Y_i`` and every pose ``(R_m, t_j)`` of a grid the posterior weights
``w_imj = exp(ℓ_imj + log π_m + log π_j − log Z_i)`` with the Gaussian log-likelihood ``ℓ`` of
:mod:`cryolens.inference.likelihood` (uniform priors by default, so ``log Z_i`` is the grid
log-evidence), pruned to the significant set (``mass``, ``max_significant``; the weights are the true
posterior probabilities, not renormalised over the kept set). Memory and streaming: as
:mod:`~cryolens.inference.estep`. No gradients are taken (an E-step treats the volume as fixed).
"""

from __future__ import annotations

import torch

from ..imaging.ctf import CTFParams
from ..imaging.so3_grid import so3_grid
from .estep import PosePosterior, class_pose_posterior, default_rotation_chunk, translation_grid  # noqa: F401
from .likelihood import SliceFn


@torch.no_grad()
def pose_posterior(images_ft: torch.Tensor, slices: SliceFn | torch.Tensor, rotations: torch.Tensor | int,
                   shifts: torch.Tensor, sigma2: torch.Tensor, *, ctf: torch.Tensor | CTFParams | None = None,
                   pixel_size: float | None = None, k_max: int | None = None,
                   log_prior_rotation: torch.Tensor | None = None, log_prior_shift: torch.Tensor | None = None,
                   mass: float = 0.999, max_significant: int = 1000,
                   rotation_chunk: int | None = None) -> PosePosterior:
    """Posterior over every (rotation, shift) of a grid for a batch of images, with significant-weight
    pruning (module docstring): :func:`~cryolens.inference.estep.class_pose_posterior` of one class.

    images_ft: ``(B, D, D)`` complex, centered transforms of the images.
    slices: :data:`~cryolens.inference.likelihood.SliceFn` ``(M_c, 3, 3) → (M_c, D, D)``, or an
    oversampled volume transform ``(Dp, Dp, Dp)`` (:func:`~cryolens.imaging.slice.prepare_volume_ft`).
    rotations: ``(M, 3, 3)`` image → volume frame, or an SO(3) grid level (:func:`so3_grid`).
    shifts: ``(T, 2)`` px ``(x, y)`` (e.g. :func:`translation_grid`), particle centre relative to the
    image centre — or ``(B, T, 2)``, a grid per image (e.g. centred on each image's previous shift,
    as RELION does). sigma2: ``(D//2+1,)`` noise power per Fourier component (likelihood module).
    ctf: ``(B, D, D)`` real CTF images or :class:`CTFParams` (then ``pixel_size`` Å/px); ``None``: no CTF.
    k_max: highest shell used (default ``D//2``).
    log_prior_rotation: ``(M,)`` or ``(B, M)``; log_prior_shift: ``(T,)`` or ``(B, T)`` — log-priors,
    uniform when ``None`` (they need not be normalised; the evidence then shifts by their normaliser).
    mass, max_significant: the significant set (module docstring). rotation_chunk: ``M_c`` (default:
    :func:`default_rotation_chunk`).
    """
    dev, rdt = images_ft.device, images_ft.real.dtype
    rot = so3_grid(rotations, device=dev, dtype=rdt) if isinstance(rotations, int) else rotations.to(dev, rdt)
    post = class_pose_posterior(images_ft, [slices], rot, shifts, sigma2, ctf=ctf, pixel_size=pixel_size, k_max=k_max,
                                log_prior_rotation=log_prior_rotation, log_prior_shift=log_prior_shift, mass=mass,
                                max_significant=max_significant, rotation_chunk=rotation_chunk)
    return PosePosterior(rotation_index=post.rotation_index, shift_index=post.shift_index, weight=post.weight,
                         count=post.count, log_evidence=post.log_evidence, kept_mass=post.kept_mass,
                         map_log_likelihood=post.map_log_likelihood)

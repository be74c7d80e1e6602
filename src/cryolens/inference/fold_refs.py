"""Leave-fold-out E-step references for auto-refine (:mod:`~cryolens.inference.autorefine`, issue 27; Class3D's
class maps use the same helpers, :mod:`~cryolens.inference.class_maps`).

A half's map is reconstructed from the very images that are then aligned against it, so each image meets
its own noise in its reference: inserted at (or near) its last pose, it adds ``≈ C² |Y|² / (σ² W)`` per pixel to
the log-likelihood there (``W = Σ C²`` of the voxel, a few images per voxel at the high shells of a 500-image
half), a bump about the previous pose that is narrower than the pose uncertainty. The posterior is then
sharper than the errors and the poses hold on to where they were (Einstein-from-noise on a small scale).

With ``reference_folds = K ≥ 2`` each half's images are dealt into ``K`` folds (position in the half mod
``K``), each fold's weighted insertions are summed in its own accumulator, and the E-step reference of
fold ``f`` is the half's MAP map made **without** fold ``f``'s sums, under the same prior ``λ = σ²/τ²``
(the prior is a signal power, independent of how many images enter). No image ever sees its own noise;
each reference holds ``(K−1)/K`` of its half. The half maps, FSC, ``τ²`` and the final map are unchanged:
they use every image. Cost per iteration: ``2K`` more reconstructions and E-step references.
"""

from __future__ import annotations

import numpy as np
import torch

from .reconstruct import FourierAccumulator

FOLD_STREAM = 0xF01D  # the second seed word of the folds' permutation


def fold_of(n: int, folds: int, seed: int | None = None) -> np.ndarray:
    """``(n,)`` int fold of each of ``n`` images in their order: position mod ``folds`` (every fold spans the
    whole set, e.g. every micrograph; ``folds ≤ 1``: all 0); with ``seed``, ``π(i) mod folds`` for a random
    permutation ``π`` of ``0 … n−1`` drawn from ``(seed, FOLD_STREAM)`` (folds of equal sizes, independent of the
    order and of other draws from ``seed``, e.g. Class3D's first split)."""
    pos = np.arange(n) if seed is None else np.random.default_rng([seed, FOLD_STREAM]).permutation(n)
    return pos % max(1, folds)


def joined(parts: list[FourierAccumulator]) -> FourierAccumulator:
    """A new accumulator holding the sums of all ``parts`` (the half's, from its folds' ones; a single part is
    returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    out = parts[0].merged(parts[1])
    for p in parts[2:]:
        out.absorb(p)
    return out


def fold_out_maps(total: FourierAccumulator, parts: list[FourierAccumulator], reg: torch.Tensor,
                  inverse_reg: torch.Tensor | None = None) -> torch.Tensor:
    """``(K, D, D, D)`` float32 CPU: for each of the ``K`` parts, the map of ``total``'s sums without that part's,
    reconstructed with the per-shell regulariser ``reg (D//2+1,)`` and optional ``inverse_reg (D//2+1,)``
    (:meth:`FourierAccumulator.reconstruct`)."""
    return torch.stack([total.merged(p, -1.0).reconstruct(reg, inverse_reg).float().cpu() for p in parts])

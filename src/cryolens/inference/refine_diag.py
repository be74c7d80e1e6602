"""Auto-refine's per-iteration pose diagnostic (:mod:`~cryolens.inference.autorefine`): on the first
images of each half's E-step, the expected angular accuracy of their updated poses
(:func:`~cryolens.inference.pose_accuracy.expected_angular_accuracy`, RELION's ``acc_rot``) and, in local
searches, the posterior mass the search window holds and the posterior's RMS angle
(:func:`~cryolens.inference.oversampling.window_diagnostic`). The sums are joined over the ranks
(:func:`~cryolens.inference.distributed.all_reduce_sum`) so that every rank follows the same schedule; and
the per-image outcomes of an iteration (:class:`Tally`), merged over the ranks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..imaging.ctf import ctf_2d
from ..imaging.so3_grid import angular_step
from ..io.particles import Particles
from .distributed import all_reduce_sum, merge_rows
from .oversampling import Reference, Stage, window_diagnostic
from .pose_accuracy import expected_angular_accuracy
from .refine_state import RefineConfig


def local_sigma_deg(order: int, accuracy: float | None, cfg: RefineConfig) -> float:
    """The local searches' prior σ at grid ``order``, degrees: the level's step (RELION's σ = 2 × the
    oversampled step), or with ``cfg.follow_accuracy`` the larger of it and the measured ``accuracy``, at
    most twice the step (the search's cost grows as the cube of σ)."""
    step = angular_step(order)
    use = cfg.follow_accuracy and accuracy is not None and math.isfinite(accuracy)
    return min(2 * step, max(step, float(accuracy))) if use else step


def accuracy_ahead(particles: Particles, ref: Reference, sigma2: torch.Tensor, rotations: torch.Tensor,
                   indices: np.ndarray, k: int, seed: int, device=None) -> float:
    """The mean expected angular accuracy (degrees) the coming E-step will have, measured before it: the
    images ``indices`` (CTF only; no image is read) at their current ``rotations (N, 3, 3)`` under the
    reference ``ref`` and noise ``sigma2 (D//2+1,)`` that E-step will use, shells ``≤ k``; NaN without images."""
    if len(indices) == 0:
        return float("nan")
    it = torch.as_tensor(indices)
    c = None if particles.ctf is None else ctf_2d(particles.ctf[it].to(device), particles.box_size,
                                                  particles.pixel_size, device=device)
    s2 = sigma2.to(device)
    acc = expected_angular_accuracy(ref.slicer, ref.values, c, s2, rotations[it].to(device=device, dtype=s2.dtype), k,
                                    generator=torch.Generator().manual_seed(seed))
    return float(acc.double().mean())


class PoseDiagnostics:
    """Running sums of one iteration's sampled diagnostics (float64, CPU): ``n_accuracy`` images with
    accuracy ``Σ acc`` (degrees), ``n_window`` with window mass ``Σ m``, ``min m``, and ``Σ rms²``."""

    def __init__(self, accuracy_images: int, window_images: int, seed: int = 0):
        self.accuracy_images, self.window_images = accuracy_images, window_images
        self.sums = torch.zeros(5, dtype=torch.float64)  # n_acc, Σ acc, n_win, Σ mass, Σ rms²
        self.min_mass = torch.ones(1, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.done = [False, False]

    def sample(self, h: int, y, c, s2, ref: Reference, stage: Stage, new_rot, prev_rot, prev_shift) -> None:
        """Once per half ``h`` (its first batch): the accuracy at the updated poses ``new_rot (B, 3, 3)``
        and, for a local stage, the window mass about the previous poses."""
        if self.done[h]:
            return
        self.done[h] = True
        n = min(self.accuracy_images, y.shape[0])
        if n:
            sl = slice(0, n)
            acc = expected_angular_accuracy(ref.slicer, ref.values, None if c is None else c[sl], s2,
                                            new_rot[sl].to(s2.dtype), stage.k_max, generator=self.generator)
            self.sums[0] += n
            self.sums[1] += acc.double().sum().cpu()
        m = min(self.window_images, y.shape[0]) if stage.local else 0
        if m:
            sl = slice(0, m)
            mass, rms = window_diagnostic(y[sl], None if c is None else c[sl], s2, ref, stage, prev_rot[sl],
                                          prev_shift[sl])
            self.sums[2:] += torch.stack([torch.tensor(float(m)), mass.double().sum().cpu(),
                                          rms.double().square().sum().cpu()])
            self.min_mass = torch.minimum(self.min_mass, mass.double().min().cpu()[None])

    def summary(self) -> dict:
        """The iteration's numbers joined over the ranks: ``accuracy_deg`` (mean), ``window_mass_mean``,
        ``window_mass_min`` (this rank's: a diagnostic only), ``window_rms_deg`` (RMS); NaN where nothing was
        sampled."""
        all_reduce_sum(self.sums)
        n_acc, s_acc, n_win, s_mass, s_rms2 = (float(x) for x in self.sums)
        nan = float("nan")
        return {"accuracy_deg": s_acc / n_acc if n_acc else nan,
                "window_mass_mean": s_mass / n_win if n_win else nan,
                "window_mass_min": float(self.min_mass) if n_win else nan,
                "window_rms_deg": math.sqrt(s_rms2 / n_win) if n_win else nan}


@dataclass
class Tally:
    """Auto-refine's per-image outcomes of one iteration's E-steps (float64, CPU): pose change (degrees), MAP weight,
    number of significant poses; and the updated pose estimates."""

    rotations: torch.Tensor
    shifts: torch.Tensor
    change: torch.Tensor
    max_weight: torch.Tensor
    n_significant: torch.Tensor
    mine: torch.Tensor  # (N,) bool: the images this rank's E-steps saw
    kept_mass: torch.Tensor | None = None  # (N,) the last pass's mass the significant set held
    diag: PoseDiagnostics | None = None

    def merge(self) -> None:
        """Every rank gets every image's outcome (no-op in one process)."""
        merge_rows([self.rotations, self.shifts, self.change, self.max_weight, self.n_significant, self.kept_mass],
                   self.mine)

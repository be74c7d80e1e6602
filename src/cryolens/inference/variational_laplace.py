"""Laplace pose posteriors for FSTdiff's non-amortized ``q(R, t)``: the per-image spreads from the curvature
of the image's own log-likelihood at its mean pose, and Gauss-Newton steps of the means (docs/METHODS.md,
"FSTdiff", "Pose spreads by Laplace").

For image ``i`` at the posterior-mean map ``μ`` (the map held fixed), the pose ``R̄ exp([ε]×)``, ``t̄ + τ``
(``ε`` rad in the family's Lie-algebra coordinates, ``τ`` px) predicts ``p(ε, τ) = C · ramp · P μ``;
``−log p(Y | ·) = Σ_f W_f |Y_f − p_f|²`` (``W`` the likelihood's weights ``1/(2σ²)``). Its Gauss-Newton
Hessian in ``η = (ε, τ)`` is ``H = 2 Σ_f W_f Re(J_fᵀ* J_f)`` with ``J = ∂p/∂η`` (central differences of
step ``step`` rad / px; the slice's trilinear interpolation is piecewise linear, so the derivative is
that of its secant), plus the shift prior's ``1/s₀²``; the gradient ``g = −2 Σ_f W_f Re(J_f* (Y_f − p_f))``.

- Spreads: ``q(η) ≈ N(η̂, H⁻¹)`` (Laplace): per image the rotational marginal variances
  ``[H⁻¹]_kk``, k = 1…3 (the shift integrated out) and the shift ones; the rotational spread
  ``sqrt(Σ_k [H⁻¹]_kk)`` predicts the error where the learned spreads (the ELBO's mean-field optimum in
  a factorised family, and slow to learn at a small learning rate) do not.
- Means: ``η ← −H⁻¹ g`` (Gauss-Newton) moves each mean to its image's mode given the map; the step's
  rotation is capped at ``max_step`` rad (a local refinement; no step leaves the basin it starts in).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ..imaging.fft import fft2_centered
from ..imaging.forward import shift_and_ctf
from ..imaging.rotations import rotvec_to_matrix
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .distributed import all_reduce_sum, gather_rows, merge_rows, shard
from .likelihood import shell_weights
from .pose_refine import refine_poses
from .variational import VariationalReconstruction


def _predict(model: VariationalReconstruction, grid: torch.Tensor, rot: torch.Tensor, shifts: torch.Tensor,
             eta: torch.Tensor, batch: dict) -> torch.Tensor:
    """``p(η)`` ``(B, D, D)`` complex for per-image offsets ``eta (B, 5)`` (module docstring)."""
    r = rot @ rotvec_to_matrix(eta[:, :3].to(rot.dtype))
    return shift_and_ctf(model.slices(grid, r), shifts + eta[:, 3:].to(shifts.dtype), batch.get("ctf"),
                         model.pixel_size)


def laplace_batch(model: VariationalReconstruction, grid: torch.Tensor, batch: dict, step: float = 0.01
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H (B, 5, 5), g (B, 5), rotations (B, 3, 3), shifts (B, 2))`` at the batch's pose means (module
    docstring); ``grid`` the map's completed transform ``(D, D, D)`` complex."""
    rot, _, shifts, log_ss = model.pose_posterior(batch)
    d, b = model.volume.box_size, len(rot)
    w = shell_weights(model.log_noise.detach().exp().to(model.plane.dtype), d, model.k_max)
    y = fft2_centered(batch["image"].to(model.plane.dtype) / model.norm)
    zero = torch.zeros(b, 5, dtype=model.plane.dtype, device=rot.device)
    centre = _predict(model, grid, rot, shifts, zero, batch)
    cols = []
    for k in range(5):
        e = zero.clone()
        e[:, k] = step
        cols.append((_predict(model, grid, rot, shifts, e, batch) - _predict(model, grid, rot, shifts, -e, batch))
                    / (2 * step))
    jac = torch.stack(cols, 1)  # (B, 5, D, D)
    h = 2 * torch.einsum("bkyx,blyx,yx->bkl", jac.real, jac.real, w) + \
        2 * torch.einsum("bkyx,blyx,yx->bkl", jac.imag, jac.imag, w)
    res = y - centre
    g = -2 * torch.einsum("bkyx,byx,yx->bk", jac.real, res.real, w) - \
        2 * torch.einsum("bkyx,byx,yx->bk", jac.imag, res.imag, w)
    prior = torch.tensor([0, 0, 0] + [1 / model.shift_prior_std**2] * 2, dtype=h.dtype, device=h.device)
    h = h + torch.diag(prior if log_ss is not None else torch.tensor([0, 0, 0, 1e6, 1e6], dtype=h.dtype))
    return h.double(), g.double(), rot, shifts


@torch.no_grad()
def laplace_poses(model: VariationalReconstruction, particles: Particles, device, newton: int = 0,
                  max_step: float = 0.05, batch_size: int = 128, step: float = 0.01, final_pass: bool = True,
                  split: bool = False) -> dict[str, torch.Tensor]:
    """Set the pose table's spreads by Laplace after ``newton`` capped Gauss-Newton steps of its means (module
    docstring), at the posterior-mean map. ``final_pass`` False: the spreads are those of the last step's
    curvature (one pass over the data fewer, the spreads at the means before that step: what the in-training
    update uses). ``split``: each rank of a distributed run takes its share of the images and the table's rows
    are then merged, so every rank must call it (one process: no difference). Returns per image (STAR order)
    ``rot_var (N, 3)`` rad² and ``shift_var (N, 2)`` px², the marginal variances of ``H⁻¹``."""
    table, n = model.poses, len(particles)
    grid = model.volume.mean_grid().detach()
    out = {"rot_var": torch.zeros(n, 3, dtype=torch.float64), "shift_var": torch.zeros(n, 2, dtype=torch.float64)}
    mine = shard(np.arange(n)) if split else None
    for rnd in range(int(newton) + (1 if final_pass or newton <= 0 else 0)):
        for idx, images in iterate_batches(particles, batch_size, mine):
            it = torch.as_tensor(idx)
            batch = {"index": it.to(device), "image": images.to(device)}
            if particles.ctf is not None:
                batch["ctf"] = particles.ctf[it].to(device)
            h, g, _, _ = laplace_batch(model, grid, batch, step)
            cov = torch.linalg.inv(h + 1e-9 * torch.eye(5, dtype=h.dtype, device=h.device))
            out["rot_var"][it], out["shift_var"][it] = cov[:, :3, :3].diagonal(0, 1, 2).cpu(), \
                cov[:, 3:, 3:].diagonal(0, 1, 2).cpu()
            if rnd < int(newton):
                delta = -(cov @ g[..., None])[..., 0]
                scale = (max_step / delta[:, :3].norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
                delta = (delta * scale[:, None]).to(table.delta.dtype)
                table.base[it] = table.base[it] @ rotvec_to_matrix(table.delta[it]) @ rotvec_to_matrix(delta[:, :3])
                table.delta[it] = 0
                if table.log_shift_std is not None:
                    table.shift_mean[it] += delta[:, 3:]
    if split:
        _merge_table(table, mine, n, out["rot_var"], out["shift_var"])
    table.log_rot_std.copy_((0.5 * out["rot_var"].clamp_min(1e-12).log()).to(table.log_rot_std))
    if table.log_shift_std is not None:
        table.log_shift_std.copy_((0.5 * out["shift_var"].clamp_min(1e-12).log()).to(table.log_shift_std))
    return out


def _merge_table(table, mine: np.ndarray, n: int, *more: torch.Tensor) -> None:
    """Every rank's pose table (means, offsets, shifts) and the tensors ``more`` ``(N, ...)`` get each row from
    the rank whose share ``mine`` it is (:func:`~cryolens.inference.distributed.merge_rows`)."""
    owned = torch.zeros(n, dtype=torch.bool)
    owned[torch.as_tensor(mine)] = True
    rows = [table.base, table.delta] + ([table.shift_mean] if table.log_shift_std is not None else [])
    merge_rows([t.data for t in rows] + list(more), owned)


def searched_modes(volume: torch.Tensor, particles: Particles, levels: int, max_shift: float, device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rotations (N, 3, 3), shifts (N, 2) px)``: every image's mode by
    :func:`~cryolens.inference.pose_refine.refine_poses` against the real-space map ``volume (D, D, D)`` in
    the images' units — base level 2 (15°), then ``levels`` finer levels (3.75° at 2), 8 rotations kept per
    level, shifts within ``±max_shift`` px from a 1 px grid. In a distributed run each rank searches its share
    of the images and every rank gets all modes (every rank must call it)."""
    settings = SimpleNamespace(refine_base_level=2, refine_levels=int(levels), refine_keep=8, refine_shift_step=1.0,
                               max_shift=float(max_shift), pose_batch=256)
    mine = shard(np.arange(len(particles)))
    rot, shifts = refine_poses(volume, particles, settings, device, mine)
    index = torch.as_tensor(mine)
    return gather_rows(index, rot, len(particles)), gather_rows(index, shifts, len(particles))


@torch.no_grad()
def search_poses_again(model: VariationalReconstruction, particles: Particles, device, levels: int = 2,
                       max_shift: float = 4.0, batch_size: int = 128) -> float:
    """Escape the pose posterior's local optima: every image's mode by the global hierarchical search
    (:func:`searched_modes`) against the current posterior-mean map, taken as the image's new mean (offset
    zero, spreads kept; the shift too when shifts are inferred) where the model's own log-likelihood at the
    posterior-mean map is higher there than at the current mean. Returns the fraction of images moved."""
    table, n = model.poses, len(particles)
    volume = model.volume.render()[0].detach() * model.norm  # the images' units, physical map
    rot, shifts = searched_modes(volume, particles, levels, max_shift, device)
    grid, moved = model.volume.mean_grid().detach(), torch.zeros(1, dtype=torch.float64)
    mine = shard(np.arange(n))
    for idx, images in iterate_batches(particles, batch_size, mine):
        it = torch.as_tensor(idx)
        batch = {"index": it.to(device), "image": images.to(device)}
        if particles.ctf is not None:
            batch["ctf"] = particles.ctf[it].to(device)
        r_now, _, s_now, _ = model.pose_posterior(batch)
        r_new = rot[it].to(r_now)
        s_new = shifts[it].to(s_now) if table.log_shift_std is not None else s_now  # shifts not inferred: kept
        better = (model.log_likelihood(batch, grid, r_new, s_new) > model.log_likelihood(batch, grid, r_now, s_now))
        sel = it[better.cpu()]
        table.base[sel], table.delta[sel] = r_new[better].to(table.base), 0
        if table.log_shift_std is not None:
            table.shift_mean[sel] = s_new[better].to(table.shift_mean)
        moved += int(better.sum())
    _merge_table(table, mine, n)
    all_reduce_sum(moved)
    return float(moved) / max(n, 1)


class VariationalPoseSteps:
    """The pose table's updates besides Adam's, as an engine strategy
    (:class:`~cryolens.inference.strategy.InferenceStrategy`; after the model's own epoch end, which folds the
    offsets): after the epochs in ``search_epochs`` (counting from 1) the global search's modes replace the
    means they beat (:func:`search_poses_again`, ``search_levels``, ``max_shift`` px); every ``newton_every``
    epochs one capped Gauss-Newton step of every mean, its spreads set by Laplace at the posterior-mean map
    (:func:`laplace_poses`, one data pass). Under DDP each rank takes its share of the images and the table's
    rows are merged (every rank runs the strategy). Stateless: a resumed run repeats nothing."""

    def __init__(self, newton_every: int = 0, search_epochs: tuple[int, ...] = (), search_levels: int = 2,
                 max_shift: float = 4.0):
        self.newton_every, self.search_epochs = int(newton_every), tuple(int(e) for e in search_epochs)
        self.search_levels, self.max_shift = int(search_levels), float(max_shift)

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Nothing before an epoch."""

    def before_batch(self, batch: dict, trainer) -> dict:
        """The batch unchanged (the model reads its own pose table)."""
        return batch

    def on_epoch_end(self, epoch: int, trainer) -> None:
        """The search, then the Gauss-Newton step, where due (class docstring)."""
        model, particles, device = trainer.model, trainer.particles, trainer.device
        if epoch + 1 in self.search_epochs:
            search_poses_again(model, particles, device, self.search_levels, self.max_shift)
        if self.newton_every > 0 and (epoch + 1) % self.newton_every == 0:
            laplace_poses(model, particles, device, newton=1, final_pass=False, split=True)

    def state_dict(self) -> dict:
        """Nothing to keep (class docstring)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""

"""One full-posterior EM iteration of homogeneous refinement over a pose grid (RELION's Refine3D step).

Model (:mod:`cryolens.inference.likelihood`): ``Y_i = C_i · ramp_t(P_R Ṽ) + N``, per-shell noise power
``σ²(k)``, a pose grid of rotations ``R_m`` × shifts ``t_j`` with a uniform prior.

A schedule of one step over the EM core: :mod:`~cryolens.inference.estep` with one class,
:mod:`~cryolens.inference.mstep`, :mod:`~cryolens.inference.prior`.

**E-step** (:func:`~cryolens.inference.posterior.pose_posterior`): per image the posterior weights
``w_imj`` of every grid pose, pruned to the significant set (``mass``, ``max_significant``); the
kept weights are renormalised to sum to 1 per image, and weights below ``weight_floor`` × the
image's largest weight are dropped (with ``mass = 1``, a large ``max_significant`` and
``weight_floor = 0`` the E-step is exact).

**M-step for the volume**: every kept (image, pose) pair is one weighted insertion — the shift undone,
``Y' = phase_shift(Y, −t)`` — ``Σ w C Y'`` and ``Σ w C²`` along the central slice ``R`` into a
:class:`~cryolens.inference.reconstruct.FourierAccumulator`, and the new map is
``data / (weight + λ(k))``. Insertion is linear, so per batch the pairs are first summed per
rotation (``S1_m = Σ w C Y'``, ``S2_m = Σ w C²``) and each used rotation is inserted once (tested
equal to pair-by-pair :func:`insert_weighted`); the same sums give the σ² statistics with one slice
per used rotation instead of one per pair. This is RELION's M-step; for the voxel-grid model with trilinear
interpolation it is the exact maximiser of the expected complete-data log-likelihood only in the
nearest-neighbour limit (each slice pixel feeding one voxel), an approximation otherwise.
``λ(k)`` is given per shell (``reg_per_shell``, in the accumulator's units of ``Σ C²`` per voxel),
or ``σ²(k) / τ²(k)`` from a per-shell prior power ``tau2`` of the volume's Fourier components
(MAP, up to RELION's padding-factor corrections, which are not applied), or by default a ridge of
``1e-3`` × the mean accumulated weight. ``m_step="exact"`` instead solves the un-regularised
least-squares M-step exactly (:func:`exact_m_step`, conjugate gradients), for which EM provably never
decreases the log-likelihood at fixed σ² (tested).

**M-step for σ²** (RELION's): ``σ²_new(k)`` = posterior-weighted mean over images, poses and the
pixels of shell ``k`` of ``|Y' − C · P_R|²`` with the *current* (E-step) reference ``P``, as
RELION computes it during the expectation.

**Log-likelihood**: ``Σ_i log Z_i + N · log_normaliser(σ², D, k_max)`` with ``log Z_i`` the grid
log-evidence of image ``i`` (uniform prior, :mod:`~cryolens.inference.posterior`): the marginal
log-likelihood of the data under the current volume and ``σ²``, comparable across iterations (EM
does not decrease it at fixed ``σ²`` when the M-step is exact).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..imaging.ctf import CTFParams
from ..imaging.fft import fft2_centered
from ..imaging.slice import prepare_volume_ft
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .distributed import shard
from .likelihood import ctf_images, log_normaliser, shell_weights, volume_slicer
from .memory import em_sizes
from .mstep import NoiseStats, class_sums, exact_m_step, insert_aggregates, insert_weighted  # noqa: F401
from .posterior import pose_posterior
from .prior import map_prior
from .reconstruct import FourierAccumulator


@dataclass
class EMResult:
    """The outcome of one EM iteration over ``N`` images.

    volume: ``(D, D, D)`` new map (``accumulator.reconstruct(regularisation)``), on the compute device.
    accumulator: the filled :class:`FourierAccumulator` (``count`` = number of weighted insertions).
    regularisation: ``(D//2+1,)`` the ``λ(k)`` used. sigma2: ``(D//2+1,)`` the updated noise power.
    log_likelihood: float, ``Σ_i log Z_i + N · log_normaliser`` under the *input* volume and σ².
    log_evidence: ``(N,)`` per-image ``log Z_i`` (without the normaliser).
    map_rotation_index, map_shift_index: ``(N,)`` int64 MAP pose indices into ``rotations`` / ``shifts``.
    map_shift: ``(N, 2)`` px. max_weight: ``(N,)`` posterior probability of the MAP pose.
    n_significant: ``(N,)`` number of poses inserted per image.
    """

    volume: torch.Tensor
    accumulator: FourierAccumulator | None
    regularisation: torch.Tensor
    sigma2: torch.Tensor
    log_likelihood: float
    log_evidence: torch.Tensor
    map_rotation_index: torch.Tensor
    map_shift_index: torch.Tensor
    map_shift: torch.Tensor
    max_weight: torch.Tensor
    n_significant: torch.Tensor


def batches(data: Particles | torch.Tensor, ctf, batch_size: int, sharded: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, CTFParams | torch.Tensor | None]]:
    """``(indices (B,), images (B, D, D) real, ctf of the batch)``; with ``sharded``, only this rank's
    share of the images (:func:`~cryolens.inference.distributed.shard`; all of them in one process)."""
    n = len(data) if isinstance(data, Particles) else data.shape[0]
    mine = shard(np.arange(n)) if sharded else np.arange(n)
    if isinstance(data, Particles):
        for idx, images in iterate_batches(data, batch_size, mine):
            idx_t = torch.as_tensor(idx)
            yield idx_t, images, None if data.ctf is None else data.ctf[idx_t]
        return
    for start in range(0, mine.size, batch_size):
        idx = torch.as_tensor(mine[start:start + batch_size])
        c = None
        if ctf is not None:
            c = ctf[idx] if isinstance(ctf, CTFParams) or ctf.dim() == 3 else ctf
        yield idx, data[idx], c


def _check_m_step(m_step: str, reg_per_shell, tau2) -> None:
    if m_step not in ("insert", "exact"):
        raise ValueError(f"m_step must be 'insert' or 'exact', got {m_step!r}")
    if reg_per_shell is not None and tau2 is not None:
        raise ValueError("give at most one of reg_per_shell and tau2")


def em_iteration(data: Particles | torch.Tensor, volume: torch.Tensor, sigma2: torch.Tensor,
                 rotations: torch.Tensor, shifts: torch.Tensor, *, ctf: CTFParams | torch.Tensor | None = None,
                 pixel_size: float | None = None, k_max: int | None = None, pad: int = 2,
                 batch_size: int | None = None, device=None, mass: float = 0.999, max_significant: int = 1000,
                 weight_floor: float = 1e-6,
                 reg_per_shell: torch.Tensor | None = None, tau2: torch.Tensor | None = None,
                 m_step: str = "insert", cg_iterations: int = 30, pair_chunk: int | None = None,
                 rotation_chunk: int | None = None) -> EMResult:
    """One E-step + M-step (module docstring) over all images.

    data: :class:`Particles` (images read in batches; its CTF and pixel size are used, its poses
    ignored) or real images ``(N, D, D)`` with ``ctf`` (:class:`CTFParams` ``(N,)`` with
    ``pixel_size`` Å/px, or ``(N, D, D)`` / ``(D, D)`` real CTF images, or ``None``).
    volume: ``(D, D, D)`` real current map ``[z, y, x]``; its dtype is the compute dtype.
    sigma2: ``(D//2+1,)`` noise power per Fourier component (likelihood module).
    rotations: ``(M, 3, 3)`` image → volume frame. shifts: ``(T, 2)`` px ``(x, y)``, or ``(N, T, 2)``
    per image. k_max: highest shell of the likelihood (default ``D//2``). pad: oversampling of the
    projector and the accumulator. mass, max_significant, weight_floor: the significant set.
    reg_per_shell / tau2: the regulariser ``λ(k)`` (module docstring; at most one).
    m_step: ``"insert"`` (RELION's weighted back-projection, approximate) or ``"exact"`` (the
    un-regularised least-squares maximiser by :func:`exact_m_step`, ``cg_iterations`` CG steps; keeps
    ``M`` per-rotation sums in memory; ``accumulator`` is then ``None``). batch_size: images per batch;
    pair_chunk: pairs / slices processed together; rotation_chunk: E-step chunk — ``None`` (default): chosen
    from the device's free memory (:mod:`~cryolens.inference.memory`; on the CPU at most 64, 2048 and
    :func:`~cryolens.inference.estep.default_rotation_chunk`, the fixed values used before).
    """
    _check_m_step(m_step, reg_per_shell, tau2)
    dev = torch.device(device) if device is not None else volume.device
    dt, size = volume.dtype, volume.shape[-1]
    pixel_size = data.pixel_size if isinstance(data, Particles) and pixel_size is None else pixel_size
    vol, s2 = volume.to(dev), sigma2.to(device=dev, dtype=dt)
    rot, sh = rotations.to(device=dev, dtype=dt), shifts.to(device=dev, dtype=dt)
    slicer = volume_slicer(prepare_volume_ft(vol, pad), size)
    batch_size, pair_chunk = em_sizes(dev, size, rot.shape[0] * sh.shape[-2], sh.shape[-2], dt, batch_size,
                                      pair_chunk)
    sums = _Sums(size, rot.shape[0], m_step == "exact", pad, dev, dt)
    sums.rot = rot
    out = {k: [] for k in ("idx", "lz", "r", "t", "ts", "w", "n")}
    for idx, images, c_b in batches(data, ctf, batch_size):
        y = fft2_centered(images.to(device=dev, dtype=dt))
        c = ctf_images(c_b, images.shape[0], size, pixel_size, dev, dt)
        sh_b = sh[idx.to(dev)] if sh.dim() == 3 else sh
        post = pose_posterior(y, slicer, rot, sh_b, s2, ctf=c, k_max=k_max, mass=mass,
                              max_significant=max_significant, rotation_chunk=rotation_chunk)
        keep, w_all = post.pairs(weight_floor)
        bi, ki = keep.nonzero(as_tuple=True)
        pairs = (bi, torch.zeros_like(bi), post.rotation_index[bi, ki], post.shift_index[bi, ki], w_all[bi, ki])
        power = class_sums(y, c, pairs, w_all.sum(1), sh_b, rot, [slicer], sums.add, pair_chunk, ctf_first=True)
        sums.noise.add(power, pairs[4].sum().double())
        for key, v in (("idx", idx), ("lz", post.log_evidence), ("r", post.map_rotation_index),
                       ("t", post.map_shift_index), ("ts", post.map_pose(rot, sh_b)[1]), ("w", post.weight[:, 0]),
                       ("n", keep.sum(1))):
            out[key].append(v)
    order = torch.argsort(torch.cat(out["idx"]))
    cat = {k: torch.cat(v).to(dev)[order.to(dev)] for k, v in out.items() if k != "idx"}
    log_lik = float(cat["lz"].double().sum() + order.shape[0] * log_normaliser(s2.double(), size, k_max))
    new_volume, lam = sums.volume(vol, rot, s2, k_max, reg_per_shell, tau2, cg_iterations)
    return EMResult(volume=new_volume, accumulator=sums.acc, regularisation=lam, sigma2=sums.noise.estimate().to(dt),
                    log_likelihood=log_lik, log_evidence=cat["lz"], map_rotation_index=cat["r"],
                    map_shift_index=cat["t"], map_shift=cat["ts"], max_weight=cat["w"], n_significant=cat["n"])


class _Sums:
    """The M-step sums of :func:`em_iteration`: an accumulator (``m_step="insert"``) or the per-rotation
    sums of every grid rotation (``"exact"``), and the noise statistics."""

    def __init__(self, size: int, n_rot: int, exact: bool, pad: int, dev, dt):
        self.exact, self.pad, self.size = exact, pad, size
        self.noise = NoiseStats(size, dev, dt)
        self.acc = None if exact else FourierAccumulator(size, pad, dev, dt)
        if exact:
            cdt = torch.complex128 if dt == torch.float64 else torch.complex64
            self.s1 = torch.zeros(n_rot, size, size, dtype=cdt, device=dev)
            self.s2 = torch.zeros(n_rot, size, size, dtype=dt, device=dev)
        self.rot: torch.Tensor | None = None

    def add(self, _k: int, used: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> None:
        if self.exact:
            self.s1.index_add_(0, used, s1)
            self.s2.index_add_(0, used, s2)
        else:
            insert_aggregates(self.acc, s1, s2, self.rot[used])

    def volume(self, vol, rot, s2, k_max, reg_per_shell, tau2, cg_iterations) -> tuple[torch.Tensor, torch.Tensor]:
        """``(new map, λ used)`` (module docstring)."""
        nsh, dev = self.size // 2 + 1, vol.device
        if self.exact:
            used = torch.nonzero(self.s2.flatten(1).sum(1) > 0).reshape(-1)
            new = exact_m_step(vol, self.s1[used], self.s2[used], rot[used], shell_weights(s2, self.size, k_max),
                               self.pad, cg_iterations)
            return new, torch.zeros(nsh, device=dev, dtype=torch.float64)
        if reg_per_shell is not None:
            lam = reg_per_shell.to(device=dev, dtype=torch.float64)
        elif tau2 is not None:
            lam = map_prior(s2, tau2.to(dev))[0]
        else:
            lam = 1e-3 * self.acc.shell_weight().mean() * torch.ones(nsh, device=dev, dtype=torch.float64)
        return self.acc.reconstruct(lam), lam

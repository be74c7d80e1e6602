"""The per-shell MAP prior of every EM M-step: a Gaussian prior of power ``τ²(k)`` on each Fourier
component of the map, applied as a regulariser ``λ(k)`` of the accumulated sums.

With the insertion sums ``data = Σ w C Y'`` and ``weight = Σ w C²`` of
:class:`~cryolens.inference.reconstruct.FourierAccumulator`, the MAP map is
``data / (weight + λ(k))`` with ``λ(k) = σ²(k) / (s · τ²(k))``: RELION's
``(Σ w C Y / σ²) / (Σ w C² / σ² + 1 / (s τ²))`` multiplied through by ``σ²`` (``s`` = 1 in
auto-refine; ``s = pad³ · T`` in Class3D and ab initio, RELION's ``oversampling_correction ·
tau2_fudge``, ``backprojector.cpp``). Where ``τ²`` is zero, either no data may enter (``λ = ∞``) or
RELION's *weak prior* applies (:func:`map_prior` with ``weak_prior=True``).

``τ²`` comes from the gold-standard FSC (:func:`tau2_from_fsc`, RELION's ``τ² = T · SSNR · σ²_rec``;
auto-refine) or from the power spectrum of the current map (Class3D, ab initio; see
:mod:`cryolens.imaging.spectra`). :func:`wiener_regularisation` is the same prior written with the
FSC directly (``σ²`` cancels), as known-pose back-projection uses it.
"""

from __future__ import annotations

import numpy as np
import torch

#: τ² below this fraction of its largest shell counts as zero (a low-passed start map's high shells; float
#: rounding leaves ~1e-14 there, where RELION's double precision leaves ~1e-35 under its absolute 1e-20).
TAU2_ZERO = 1e-10
#: RELION's prior where τ² is zero: ``1/τ²`` replaced by ``1 / (0.001 · weight)`` (its whitened weights).
WEAK_PRIOR = 1e-3


def tau2_from_fsc(fsc: np.ndarray | torch.Tensor, sigma2: torch.Tensor, shell_weight: torch.Tensor,
                  fudge: float = 1.0, floor: float = 1e-3) -> torch.Tensor:
    """RELION's prior power ``τ²(k) = T · SSNR(k) · σ²_rec(k)``, ``(D//2+1,)`` float64 (CPU).

    ``SSNR = FSC / (1 − FSC)`` (FSC clipped to ``[floor, 1 − floor]``); ``σ²_rec(k) = 1 / W(k)`` with
    ``W(k)`` the shell mean of the noise-whitened weights ``Σ w C² / σ²``; here ``shell_weight`` is the
    shell mean of the *unwhitened* ``Σ w C²`` (:meth:`FourierAccumulator.shell_weight`) and ``σ²``
    the per-shell noise power, so ``σ²_rec = σ² / shell_weight``. T = ``fudge``. A shell without data
    (``shell_weight = 0``) gets ``τ² = 0``: the prior holds it at zero.
    """
    f = torch.as_tensor(np.asarray(fsc, dtype=np.float64)).clip(floor, 1 - floor)
    sw = shell_weight.double().cpu()
    s2 = sigma2.double().cpu()
    ssnr = f / (1 - f)
    return torch.where(sw > 0, fudge * ssnr * s2 / sw.clamp_min(1e-300), torch.zeros_like(sw))


def map_prior(sigma2: torch.Tensor, tau2: torch.Tensor, scale: float = 1.0, *, weak_prior: bool = False,
              minres_map: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The MAP regulariser per shell, ``(…, D//2+1)`` float64 each: ``(λ, c)`` for
    :meth:`~cryolens.inference.reconstruct.FourierAccumulator.reconstruct`, the regulariser of a voxel
    with weight ``W = Σ w C²`` being ``λ(k) + c(k) / W``.

    sigma2: ``(D//2+1,)`` noise power per Fourier component; tau2: ``(…, D//2+1)`` prior power of the
    map's components (same units); scale: ``s`` (module docstring).

    - ``τ²(k) > 0``: ``λ = σ² / (s τ²)``, ``c = 0``; without ``weak_prior`` a shell with ``τ² = 0``
      gets ``λ = ∞`` (the map is held at zero there).
    - ``weak_prior`` (RELION's ``backprojector.cpp``): ``τ²`` counts as zero below :data:`TAU2_ZERO` ×
      its largest shell (a start map low-passed to ``--ini_high`` has no power above it), and there
      RELION's ``invtau2 = 1 / (0.001 · invw)`` applies. RELION's whitened weight is ``invw = κ W``
      with ``κ = 2 D⁴ / σ²`` (its transforms are divided by ``D²`` and its ``σ²`` is per real
      component), so here ``λ = 0`` and ``c = 1 / (0.001 κ²) = σ⁴ / (0.004 D⁸)``: a prior that
      vanishes wherever data accumulate, so that frequencies the start map lacked can grow. ``D``
      (the box) is read off ``sigma2``'s length.
    - shells below ``minres_map`` (RELION's ``--minres_map``): no prior (``λ = c = 0``).
    """
    t2 = tau2.double() * scale
    s2 = sigma2.to(device=t2.device, dtype=torch.float64)
    lam = torch.where(t2 > 0, s2 / t2.clamp_min(1e-300), torch.full_like(t2, float("inf")))
    inv = torch.zeros_like(lam)
    if weak_prior:
        t2 = tau2.double().to(lam.device)
        zero = t2 <= TAU2_ZERO * t2.amax(-1, keepdim=True).clamp_min(0)
        box = 2 * (s2.shape[-1] - 1)
        c = s2.square() / (4 * WEAK_PRIOR * float(box) ** 8)
        inv = torch.where(zero, c.expand_as(lam), inv)
        lam = torch.where(zero, torch.zeros_like(lam), lam)
    if minres_map > 0:
        lam[..., :minres_map] = 0
        inv[..., :minres_map] = 0
    return lam, inv


def wiener_regularisation(shell_weight: torch.Tensor, fsc_curve: np.ndarray, floor: float = 1e-3) -> torch.Tensor:
    """``λ(k) = W(k) (1 − FSC) / FSC`` with FSC clipped to ``[floor, 1 − floor]`` (per shell): the MAP
    ``λ = σ² / τ²`` of :func:`map_prior` with ``τ²`` from :func:`tau2_from_fsc` (``T = 1``), ``σ²``
    cancelled."""
    f = torch.as_tensor(np.clip(fsc_curve, floor, 1 - floor), dtype=torch.float64, device=shell_weight.device)
    return shell_weight * (1 - f) / f

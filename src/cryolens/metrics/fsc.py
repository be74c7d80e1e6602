"""Fourier shell correlation, computed exactly as RELION 3.1 does, and the resolution it implies.

``FSC_k(U, V) = Re Σ_{s∈S_k} U_s V_s* / sqrt(Σ_{S_k} |U_s|² · Σ_{S_k} |V_s|²)`` where the sums run
over the half-space of a real-input transform (``rfftn``: ``kx = 0 … D/2``, all ``ky``, ``kz``; the
``kx = 0`` and ``kx = D/2`` planes are counted once, not doubled) and shell ``S_k`` holds the
frequencies with ``round(|k|) == k`` (``|k|`` in Fourier pixels, rounding half away from zero as
RELION's ``ROUND``), ``k = 0 … D/2``. This is RELION's ``getFSC`` (``relion_image_handler --fsc``);
the test in ``tests/relion`` checks the two agree. Shell ``k`` ↔ spatial frequency
``k / (D · pixel_size)`` 1/Å, resolution ``D · pixel_size / k`` Å.

Curves are returned as numpy ``float64`` arrays ``(D//2 + 1,)`` (they are reported, plotted and
written to JSON); the sums are computed in float64 on the inputs' device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_D3 = (-3, -2, -1)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _rfft_shells(d: int, device: torch.device) -> torch.Tensor:
    """``(D, D, D//2+1)`` shell index of each ``rfftn`` coefficient (uncentered layout)."""
    full = torch.fft.fftfreq(d, 1.0 / d, device=device, dtype=torch.float64)  # 0, 1, …, −1 (Fourier px)
    half = torch.arange(d // 2 + 1, device=device, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(full, full, half, indexing="ij")
    r = torch.sqrt(kx * kx + ky * ky + kz * kz)
    return torch.floor(r + 0.5).long()  # RELION's ROUND (half away from zero; r ≥ 0)


def fsc(vol1: torch.Tensor | np.ndarray, vol2: torch.Tensor | np.ndarray) -> np.ndarray:
    """Fourier shell correlation of two real maps, as RELION's ``relion_image_handler --fsc``.

    vol1, vol2: ``(..., D, D, D)`` real, ``[z, y, x]``, same shape, any device (torch or numpy).
    Returns ``(..., D//2 + 1)`` float64 numpy, shell ``k`` at ``k / (D · pixel_size)`` 1/Å.
    A shell where either map has no power (0/0, e.g. shell 0 of two zero-mean maps up to
    round-off, or beyond a hard low-pass) is reported as 0 rather than RELION's NaN.
    """
    a, b = _as_tensor(vol1), _as_tensor(vol2)
    if a.shape != b.shape:
        raise ValueError(f"fsc: maps have different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 3 or not (a.shape[-1] == a.shape[-2] == a.shape[-3]):
        raise ValueError(f"fsc: expected cubic maps (..., D, D, D), got {tuple(a.shape)}")
    if a.is_complex() or b.is_complex():
        raise ValueError("fsc: expected real maps")
    d = a.shape[-1]
    b = b.to(a.device)
    # the centre of the box sits at index D//2, not 0: that multiplies both transforms by the same
    # phase (−1)^(kx+ky+kz), which cancels in U V*, so a plain rfftn is enough
    fa = torch.fft.rfftn(a.to(torch.float64), dim=_D3)
    fb = torch.fft.rfftn(b.to(torch.float64), dim=_D3)
    shells = _rfft_shells(d, a.device).reshape(-1)
    n = d // 2 + 1
    keep = shells < n
    idx = shells[keep]
    lead = fa.shape[:-3]

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(*lead, -1)[..., keep]
        out = torch.zeros(*lead, n, dtype=torch.float64, device=v.device)
        return out.index_add_(-1, idx, v)

    num = shell_sum((fa * fb.conj()).real)
    den = shell_sum(fa.abs() ** 2) * shell_sum(fb.abs() ** 2)
    curve = torch.where(den > 0, num / den.clamp_min(1e-300).sqrt(), torch.zeros_like(num))
    return curve.cpu().numpy()


def fsc_masked(vol1: torch.Tensor | np.ndarray, vol2: torch.Tensor | np.ndarray,
               mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """FSC of ``vol1 · mask`` and ``vol2 · mask`` (a real-space mask ``(D, D, D)``, soft edges
    recommended; no correction for the mask's own correlation is made). Returns as :func:`fsc`."""
    a, b = _as_tensor(vol1), _as_tensor(vol2)
    m = _as_tensor(mask).to(a.device)
    if m.shape[-3:] != a.shape[-3:]:
        raise ValueError(f"fsc_masked: mask shape {tuple(m.shape)} differs from the maps' {tuple(a.shape)}")
    m = m.to(torch.float64)
    return fsc(a.to(torch.float64) * m, b.to(a.device, torch.float64) * m)


def randomize_phases(volume: torch.Tensor | np.ndarray, from_shell: int, seed: int = 0) -> torch.Tensor:
    """``volume (D, D, D)`` real with the phase of every Fourier coefficient in shells ``≥ from_shell``
    (shells as :func:`fsc`) replaced by a uniform random one: the phase of the transform of real white noise
    (``torch.Generator`` seeded by ``seed``), which has the Hermitian symmetry of a real map, so every
    amplitude is kept exactly. float64, same device."""
    v = _as_tensor(volume).to(torch.float64)
    d = v.shape[-1]
    f = torch.fft.rfftn(v, dim=_D3)
    gen = torch.Generator().manual_seed(int(seed))
    white = torch.fft.rfftn(torch.randn(v.shape[-3:], generator=gen, dtype=torch.float64), dim=_D3).to(f.device)
    phase = white / white.abs().clamp_min(1e-300)
    far = _rfft_shells(d, f.device) >= from_shell
    return torch.fft.irfftn(torch.where(far, f.abs() * phase, f), s=v.shape[-3:], dim=_D3)


def fsc_solvent_corrected(vol1: torch.Tensor | np.ndarray, vol2: torch.Tensor | np.ndarray,
                          mask: torch.Tensor | np.ndarray, randomize_at: float = 0.8,
                          seed: int = 0, unmasked: np.ndarray | None = None) -> np.ndarray:
    """FSC of two half maps inside a soft ``mask (D, D, D)``, corrected for the correlation the mask itself
    adds by phase randomisation (Chen et al. 2013; RELION's post-processing and ``--solvent_correct_fsc``).

    ``k_r``: the first shell ``≥ 1`` where the *unmasked* FSC falls below ``randomize_at``. Both maps' phases
    beyond ``k_r`` are randomised (:func:`randomize_phases`, seeds ``seed`` and ``seed + 1``) and masked the
    same way; with ``FSC_t`` the masked FSC and ``FSC_n`` that of the randomised maps, shells ``≥ k_r`` read
    ``(FSC_t − FSC_n) / (1 − FSC_n)`` and shells below keep ``FSC_t``. Without such a shell the masked FSC is
    returned unchanged. ``unmasked``: the two maps' plain FSC when the caller has it (computed otherwise).
    Returns ``(D//2 + 1,)`` float64, as :func:`fsc`."""
    masked = fsc_masked(vol1, vol2, mask)
    unmasked = fsc(vol1, vol2) if unmasked is None else np.asarray(unmasked)
    below = np.nonzero(unmasked[1:] < randomize_at)[0]
    if below.size == 0:
        return masked
    k_r = int(below[0]) + 1
    noise = fsc_masked(randomize_phases(vol1, k_r, seed), randomize_phases(vol2, k_r, seed + 1), mask)
    corrected = (masked - noise) / np.clip(1 - noise, 1e-6, None)
    return np.where(np.arange(masked.shape[0]) >= k_r, corrected, masked)


def fsc_frequencies(box_size: int, pixel_size: float) -> np.ndarray:
    """Spatial frequency (1/Å) of each FSC shell ``k = 0 … D/2``: ``k / (D · pixel_size)``."""
    return np.arange(box_size // 2 + 1, dtype=np.float64) / (box_size * pixel_size)


def resolution_at(curve: torch.Tensor | np.ndarray, threshold: float, pixel_size: float, box_size: int) -> float:
    """Resolution (Å) where ``curve`` first falls below ``threshold`` (0.143 half maps, 0.5 against
    a ground truth).

    Shell 0 (the mean) is skipped. With ``k`` the first shell ``≥ 1`` whose value is below the
    threshold, the crossing is interpolated linearly between shells ``k − 1`` and ``k``:
    ``f = k − 1 + (c[k−1] − t) / (c[k−1] − c[k])`` Fourier pixels, and the resolution is
    ``box_size · pixel_size / f``. A NaN shell counts as below, and the cut is then at ``k − 1``.
    Edge cases:

    - never below the threshold up to Nyquist: returns the Nyquist limit ``2 · pixel_size`` (the
      resolution of the curve's last shell; the true resolution is at least that good and cannot
      be measured beyond it);
    - already below at shell 1: returns ``inf`` (no measurable resolution).
    """
    c = np.asarray(curve.detach().cpu() if isinstance(curve, torch.Tensor) else curve, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] < 2:
        raise ValueError(f"resolution_at: expected a 1D curve of at least 2 shells, got shape {c.shape}")
    below = ~(c[1:] >= threshold)  # NaN → below
    if not below.any():
        return float(box_size * pixel_size / (c.shape[0] - 1))  # the last shell: 2·pixel_size at D/2
    k = int(np.argmax(below)) + 1
    if k == 1:
        return math.inf
    hi, lo = c[k - 1], c[k]
    # a NaN shell cannot be interpolated into: cut at the last shell known to be above
    frac = 0.0 if not np.isfinite(lo) else (1.0 if hi == lo else (hi - threshold) / (hi - lo))
    f = (k - 1) + min(max(frac, 0.0), 1.0)
    return float(box_size * pixel_size / f)


def fsc_auc(curve: torch.Tensor | np.ndarray, box_size: int) -> float:
    """Area under an FSC curve against spatial frequency in cycles/px (CryoBench's FSC-AUC).

    ``curve``: ``(D//2+1,)`` FSC per shell ``k``, at frequency ``k / D`` cycles/px; trapezoid rule over
    ``[0, 0.5]``. The signed curve is integrated, as CryoBench does (``sklearn.metrics.auc`` on the
    curve), so a map against itself gives 0.5 and unrelated maps give ≈ 0 (noise shells cancel).
    """
    c = np.asarray(curve.detach().cpu() if isinstance(curve, torch.Tensor) else curve, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] != box_size // 2 + 1:
        raise ValueError(f"fsc_auc: expected a curve of {box_size // 2 + 1} shells for D={box_size}, got {c.shape}")
    freq = np.arange(c.shape[0], dtype=np.float64) / box_size
    return float(np.sum(0.5 * (c[1:] + c[:-1]) * np.diff(freq)))

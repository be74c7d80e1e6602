"""The Fourier ring correlation loss of E2GMM (Chen & Ludtke 2021, docs/METHODS.md "E2GMM") and the soft
unit-ball penalty on its latents.

**FRC per image.** For a predicted image transform ``P`` and an observed one ``X`` (both ``(D, D)`` complex,
centred layout, docs/CONVENTIONS.md "Fourier transforms"), ring ``k`` is the set of pixels with
``round(|f|·D) == k`` (docs/CONVENTIONS.md "Frequencies and shells") and

    FRC_k = Σ_ring Re(P · conj X) / ( sqrt(Σ_ring |P|²) · sqrt(Σ_ring |X|²) ).

The sums run over the whole centred grid (each ``±k`` pair counted twice, as both numerator and
denominator, so the ratio is that of the half-plane sums up to the ``kx = 0`` line). A ring where either
image has no power gives 0. The loss of an image is minus the *unweighted* mean of ``FRC_k`` over the rings
``lo … hi`` (inclusive): each ring counts the same whatever its number of pixels, and the FRC does not
depend on the scale of either image, so no noise level or amplitude scale needs estimating.

**Latent radius.** E2GMM keeps ``z`` softly inside the unit ball with ``max(‖z‖ − 1, 0)`` per image.
"""

from __future__ import annotations

import math

import torch

from ..imaging.grids import shell_index_2d, shell_sum

_TINY = 1e-30


def frc_rings(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per-image FRC ``(B, D//2 + 1)`` of ring ``k = 0 … D//2`` (module docstring).

    predicted, observed: ``(B, D, D)`` complex centred transforms (float32 or float64 parts); the corners
    beyond Nyquist belong to no ring."""
    d = predicted.shape[-1]
    shells = shell_index_2d(d, device=predicted.device)
    n = d // 2 + 1
    cross = shell_sum((predicted * observed.conj()).real, shells, n)
    pp = shell_sum(predicted.real.square() + predicted.imag.square(), shells, n)
    oo = shell_sum(observed.real.square() + observed.imag.square(), shells, n)
    # each power clamped separately (no underflow of the product); clamping also keeps sqrt's gradient finite
    return cross / (pp.clamp_min(_TINY).sqrt() * oo.clamp_min(_TINY).sqrt())


def frc_loss(predicted: torch.Tensor, observed: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``(B,)`` minus the mean FRC over rings ``lo … hi`` inclusive (module docstring), in ``[−1, 1]``.
    predicted, observed: ``(B, D, D)`` complex centred transforms; ``0 ≤ lo ≤ hi ≤ D//2``."""
    d = predicted.shape[-1]
    if not 0 <= lo <= hi <= d // 2:
        raise ValueError(f"FRC ring band {lo}..{hi} is outside 0..{d // 2} for a box of {d}")
    return -frc_rings(predicted, observed)[:, lo:hi + 1].mean(-1)


def ring_band(box_size: int, pixel_size: float, low_res: float, high_res: float) -> tuple[int, int]:
    """E2GMM's ring band ``(lo, hi)`` from resolutions in Å (EMAN2 ``--minres`` / ``--maxres``):
    ``lo = max(1, ⌈2·D·px / low_res⌉ // 2)``; ``hi = D/2 − 1`` (the rings EMAN2 compares up to its box's
    Nyquist) or, with ``high_res > 0``, the ring of that resolution ``⌊D·px / high_res⌋`` capped there."""
    d = int(box_size)
    lo = max(1, math.ceil(2 * d * pixel_size / low_res) // 2) if low_res > 0 else 1
    hi = d // 2 - 1
    if high_res > 0:
        hi = min(hi, int(d * pixel_size / high_res))
    if lo > hi:
        raise ValueError(f"FRC band: low resolution {low_res} Å and high resolution {high_res} Å leave no ring "
                         f"(box {d}, {pixel_size} Å/px)")
    return lo, hi


def latent_radius_penalty(z: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``max(‖z‖ − 1, 0)`` per row of ``z (B, L)`` (E2GMM's soft unit ball)."""
    return torch.relu(z.float().norm(dim=-1) - 1.0)

"""The solvent mask made from a map (imaging/masks.py) against its closed form on a Gaussian blob, and the
phase-randomisation correction of a masked FSC (metrics/fsc.py) against what it must remove: the
correlation a hard mask adds beyond the signal's band, and nothing where there is none."""

import math

import numpy as np
import torch

from cryolens.imaging import gaussian_volume
from cryolens.imaging.grids import coord_grid_3d, lowpass_volume, spherical_mask
from cryolens.imaging.masks import solvent_mask
from cryolens.metrics.fsc import fsc, fsc_masked, fsc_solvent_corrected, randomize_phases

D, PX = 48, 2.0


def test_solvent_mask_of_a_gaussian_blob_follows_its_threshold_radius():
    """A Gaussian of σ = 8 Å (nothing above 1/15 Å to low-pass away) thresholded at 0.2 of its peak covers
    r₀ = σ·√(2 ln 5); the mask is 1 out to r₀ + extend, 0.5 half-way through the soft edge, 0 beyond it."""
    r = coord_grid_3d(D, dtype=torch.float64).norm(dim=-1) * PX  # Å from the box centre
    sigma, extend, soft = 8.0, 3.0, 6.0
    blob = torch.exp(-r.square() / (2 * sigma**2))
    mask = solvent_mask(blob, PX, extend=extend, soft=soft).double()
    r0 = sigma * math.sqrt(2 * math.log(5))
    assert mask.min() >= 0 and mask.max() <= 1
    assert bool((mask[r <= r0 + extend - PX] == 1).all())
    assert bool((mask[r >= r0 + extend + soft + PX] == 0).all())
    ring = (r - (r0 + extend + soft / 2)).abs() < 0.3 * PX
    assert ring.any() and abs(float(mask[ring].mean()) - 0.5) < 0.15
    assert bool((solvent_mask(torch.zeros(D, D, D), PX) == 1).all())  # an empty map: nothing masked


def _halves(noise: float, seed: int = 0):
    """Twelve Gaussian blobs low-passed to 12 Å (shell 8), plus independent white noise per half (``noise``
    × the signal's standard deviation)."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(12, 3, generator=g, dtype=torch.float64) - 0.5) * 20
    widths = 1.5 + torch.rand(12, generator=g, dtype=torch.float64)
    s = lowpass_volume(gaussian_volume(centres, widths, torch.ones(12, dtype=torch.float64), D), 12.0, PX,
                       width_shells=0.5)
    n1, n2 = (noise * s.std() * torch.randn(D, D, D, generator=g, dtype=torch.float64) for _ in range(2))
    return s + n1, s + n2


def test_correction_removes_the_correlation_a_hard_mask_adds():
    """Beyond the signal's band (shells ≥ 12 of 24) the halves share nothing: the FSC of the unmasked halves
    is noise around 0. A hard (binary) tight mask spreads their shared low-resolution content into those
    shells and the masked FSC reads far above 0 there; corrected, it is back around 0 — and below the
    phase-randomisation shell the corrected curve is the masked one exactly."""
    h1, h2 = _halves(noise=1.0)
    hard = (spherical_mask(D, D / 5, 0.0) > 0.5).double()
    far = slice(12, D // 2 + 1)
    assert abs(fsc(h1, h2)[far].mean()) < 0.03
    masked = fsc_masked(h1, h2, hard)
    corrected = fsc_solvent_corrected(h1, h2, hard, seed=5)
    assert masked[far].mean() > 0.3, masked.round(2)
    assert abs(corrected[far].mean()) < 0.05, corrected.round(2)
    k_r = int(np.nonzero(fsc(h1, h2)[1:] < 0.8)[0][0]) + 1
    assert np.array_equal(corrected[:k_r], masked[:k_r])


def test_without_a_mask_the_correction_changes_little():
    """With the mask all ones, randomised phases carry no correlation (FSC_n ≈ 0 ± shell noise), so the
    corrected curve stays within the shell noise of the plain FSC; a curve never below 0.8 is returned
    untouched."""
    h1, h2 = _halves(noise=2.0, seed=1)
    ones = torch.ones(D, D, D, dtype=torch.float64)
    plain, corrected = fsc(h1, h2), fsc_solvent_corrected(h1, h2, ones, seed=2)
    assert np.abs(corrected - plain)[2:].max() < 0.12
    assert np.array_equal(fsc_solvent_corrected(h1, h1, ones), fsc(h1, h1))


def test_randomised_phases_keep_the_amplitudes_and_the_low_shells():
    """Below the shell the map is unchanged; every shell's power is kept; beyond it the map no longer
    correlates with the original."""
    h1, _ = _halves(noise=1.0, seed=3)
    r = randomize_phases(h1, 6, seed=0)
    f0, f1 = torch.fft.rfftn(h1), torch.fft.rfftn(r)
    assert torch.allclose(f0.abs(), f1.abs(), rtol=1e-6, atol=1e-6 * float(f0.abs().max()))
    c = fsc(h1, r)
    assert np.abs(c[1:6] - 1).max() < 1e-9 and abs(c[8:].mean()) < 0.05

"""cryolens.metrics.fsc against relion_image_handler --fsc (RELION 3.1.3).

RELION sums over the half-space of a real-input transform (the kx = 0 plane counted once) with
shells round(|k|); cryolens does the same and the curves agree to RELION's printed precision:
RELION prints 6 decimals for positive values and 5 for negative ones (the sign takes a digit of
its fixed-width field), so the rounding is ≤ 5e-7 and ≤ 5e-6 respectively — the measured
differences sit exactly at those bounds. Two plausible alternatives — the full transform, and
floor(|k|) shells — are checked to differ by much more, so the comparison is sharp.
"""

import numpy as np
import pytest
import torch

from cryolens.bench import relion
from cryolens.metrics import fsc, fsc_masked

pytestmark = pytest.mark.relion

PX = 1.5


def _within_printed_precision(ours, ref):
    tol = np.where(ref < 0, 6e-6, 6e-7)
    return bool(np.all(np.abs(ours - ref) <= tol))


def _noisy_pair(volume, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    a = volume + sigma * torch.randn(volume.shape, generator=g, dtype=volume.dtype)
    b = volume + sigma * torch.randn(volume.shape, generator=g, dtype=volume.dtype)
    return a.float(), b.float()


def _full_fft_floor_variants(a, b):
    """FSC over the full transform with round shells, and over the half-space with floor shells."""
    d = a.shape[-1]
    fa, fb = np.fft.fftn(a.double().numpy()), np.fft.fftn(b.double().numpy())
    k = np.fft.fftfreq(d, 1 / d)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2).ravel()

    def curve(shells, sel):
        keep = sel & (shells <= d // 2)
        s = shells[keep]
        num = np.bincount(s, (fa * fb.conj()).real.ravel()[keep], d // 2 + 1)
        da = np.bincount(s, (np.abs(fa) ** 2).ravel()[keep], d // 2 + 1)
        db = np.bincount(s, (np.abs(fb) ** 2).ravel()[keep], d // 2 + 1)
        return num / np.sqrt(da * db)

    half = (kx >= 0).ravel() | (kx == -d // 2).ravel()  # rfft keeps kx = 0 … D/2 (−D/2 ≡ +D/2)
    return curve(np.floor(r + 0.5).astype(int), np.ones_like(half)), curve(np.floor(r).astype(int), half)


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_fsc_matches_relion_image_handler(smooth_volume, sigma):
    """Two noisy copies of a map (two noise levels): metrics.fsc equals relion_image_handler --fsc
    to its printed precision at every shell (6e-7 where RELION's value is positive, 6e-6 where
    negative), while the full-FFT and floor-shell variants differ by > 1e-3."""
    a, b = _noisy_pair(smooth_volume, sigma, seed=int(sigma * 100))
    ref = relion.fsc(a, b, PX)
    ours = fsc(a, b)
    assert ref.shape == ours.shape == (a.shape[-1] // 2 + 1,)
    assert _within_printed_precision(ours, ref)
    full, floor = _full_fft_floor_variants(a, b)
    assert np.abs(full - ref).max() > 1e-3
    assert np.abs(floor - ref).max() > 1e-3


def test_fsc_matches_relion_for_other_box_and_masked_maps(tmp_path):
    """Box 48, independent noise plus shared signal, and a soft spherical mask applied to both maps
    (fsc_masked vs RELION on the masked maps): equal to RELION's printed precision at every shell."""
    from cryolens.imaging import spherical_mask

    g = torch.Generator().manual_seed(21)
    common = torch.randn(48, 48, 48, generator=g)
    a = common + 2 * torch.randn(48, 48, 48, generator=g)
    b = common + 2 * torch.randn(48, 48, 48, generator=g)
    mask = spherical_mask(48, radius=18, width=4)
    ref = relion.fsc(a * mask, b * mask, PX, workdir=tmp_path)
    assert _within_printed_precision(fsc_masked(a, b, mask), ref)

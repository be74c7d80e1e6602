"""FSC and resolution: identities of the curve, its statistics on independent noise, and the
threshold crossing on hand-computed curves. (The agreement with RELION's own FSC is checked in
tests/relion/test_relion_fsc.py.)"""

import math

import numpy as np
import pytest
import torch

from cryolens.imaging import gaussian_volume
from cryolens.metrics import fsc, fsc_frequencies, fsc_masked, resolution_at

D = 32


def _volume(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    centers = (torch.rand(8, 3, generator=g) - 0.5) * 16
    sigmas = 1.0 + torch.rand(8, generator=g)
    return gaussian_volume(centers.to(device, dtype), sigmas.to(device, dtype), torch.ones(8, device=device,
                                                                                           dtype=dtype), D)


def _half_space_shell_counts(d):
    """Number of rfftn coefficients per shell round(|k|), counted independently with numpy."""
    full = np.fft.fftfreq(d, 1 / d)
    kz, ky, kx = np.meshgrid(full, full, np.arange(d // 2 + 1), indexing="ij")
    shells = np.floor(np.sqrt(kx**2 + ky**2 + kz**2) + 0.5).astype(int)
    return np.bincount(shells.ravel(), minlength=d // 2 + 1)[: d // 2 + 1]


def test_fsc_of_a_map_with_itself_is_one(device):
    """FSC(V, V) = 1 and FSC(V, −2V) = −1 at every shell (a correlation: scale-free, signed)."""
    v = _volume(device)
    c = fsc(v, v)
    assert c.shape == (D // 2 + 1,) and c.dtype == np.float64
    assert np.abs(c - 1).max() < 1e-9
    assert np.abs(fsc(v, -2 * v) + 1).max() < 1e-9


def test_fsc_of_independent_noise_is_near_zero(device):
    """Two independent white-noise maps: |FSC_k| < 3/sqrt(n_k) at every shell k ≥ 1, with n_k the
    number of half-space coefficients in the shell (the curve's standard error is ≈ 1/sqrt(2 n_k))."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(D, D, D, generator=g).to(device)
    b = torch.randn(D, D, D, generator=g).to(device)
    c = fsc(a, b)
    n = _half_space_shell_counts(D)
    assert np.all(np.abs(c[1:]) < 3 / np.sqrt(n[1:]))
    # and it is not trivially zero: noise does correlate a little by chance
    assert np.abs(c[1:]).max() > 0.01


def test_fsc_of_signal_plus_noise_follows_the_snr():
    """V + N1 vs V + N2 with white noise: FSC_k ≈ SNR_k / (1 + SNR_k) where SNR_k is the shell's
    signal power over the noise power (a property of the correlation, computed independently)."""
    g = torch.Generator().manual_seed(2)
    v = _volume("cpu", torch.float64) * 3
    sigma = 0.5
    a = v + sigma * torch.randn(D, D, D, generator=g, dtype=torch.float64)
    b = v + sigma * torch.randn(D, D, D, generator=g, dtype=torch.float64)
    c = fsc(a, b)
    # per-shell signal power from the noiseless map's own transform, noise power σ² · D³ per coefficient
    f = np.fft.rfftn(v.numpy())
    full = np.fft.fftfreq(D, 1 / D)
    kz, ky, kx = np.meshgrid(full, full, np.arange(D // 2 + 1), indexing="ij")
    shells = np.floor(np.sqrt(kx**2 + ky**2 + kz**2) + 0.5).astype(int).ravel()
    keep = shells <= D // 2
    p = np.bincount(shells[keep], (np.abs(f) ** 2).ravel()[keep], minlength=D // 2 + 1)
    n = np.bincount(shells[keep], minlength=D // 2 + 1)
    snr = p / n / (sigma**2 * D**3)
    expected = snr / (1 + snr)
    ok = n >= 50  # shells with enough coefficients for the statistics to settle
    assert np.abs(c - expected)[ok].max() < 0.08


def test_fsc_accepts_batches_and_numpy(device):
    """A batch (2, D, D, D) gives the two curves of its members; numpy inputs give the same curve."""
    v = _volume(device)
    w = v + 0.3 * torch.randn(D, D, D, generator=torch.Generator().manual_seed(1)).to(device)
    batch = fsc(torch.stack([v, w]), torch.stack([w, w]))
    assert np.allclose(batch[0], fsc(v, w)) and np.allclose(batch[1], 1.0)
    assert np.allclose(fsc(v.cpu().numpy(), w.cpu().numpy()), fsc(v, w), atol=1e-12)


def test_fsc_rejects_mismatched_maps():
    """Different shapes, non-cubic or complex maps are errors, not silent results."""
    with pytest.raises(ValueError):
        fsc(torch.zeros(8, 8, 8), torch.zeros(10, 10, 10))
    with pytest.raises(ValueError):
        fsc(torch.zeros(8, 8, 6), torch.zeros(8, 8, 6))
    with pytest.raises(ValueError):
        fsc(torch.zeros(8, 8, 8, dtype=torch.complex64), torch.zeros(8, 8, 8, dtype=torch.complex64))


def test_masked_fsc_ignores_what_lies_outside_the_mask(device):
    """Two maps equal inside a mask and different outside: masked FSC = 1, unmasked FSC < 1."""
    v = _volume(device)
    mask = torch.zeros(D, D, D, device=device)
    mask[4:-4, 4:-4, 4:-4] = 1
    w = v + (1 - mask) * torch.randn(D, D, D, generator=torch.Generator().manual_seed(4)).to(device)
    assert np.abs(fsc_masked(v, w, mask) - 1).max() < 1e-9
    assert fsc(v, w)[1:].min() < 0.99


def test_fsc_frequencies():
    """Shell k ↔ k / (D · pixel size) 1/Å; the last shell is Nyquist, 1 / (2 · pixel size)."""
    f = fsc_frequencies(16, 2.0)
    assert f.shape == (9,)
    assert f[0] == 0 and f[1] == pytest.approx(1 / 32) and f[-1] == pytest.approx(1 / 4)


CURVE = np.array([1.0, 0.95, 0.8, 0.5, 0.2, 0.1, 0.05, 0.0, 0.0])  # D = 16


def test_resolution_interpolates_the_first_crossing():
    """Hand-computed crossings on a D = 16, 2 Å/px curve:
    threshold 0.6 falls between shells 2 (0.8) and 3 (0.5) at f = 2 + 0.2/0.3 = 8/3 Fourier px
    → 16·2 / (8/3) = 12 Å; threshold 0.143 between shells 4 (0.2) and 5 (0.1) at f = 4.57 → 32/4.57 Å."""
    assert resolution_at(CURVE, 0.6, 2.0, 16) == pytest.approx(12.0, rel=1e-12)
    assert resolution_at(CURVE, 0.143, 2.0, 16) == pytest.approx(32 / 4.57, rel=1e-12)
    # a torch curve gives the same
    assert resolution_at(torch.from_numpy(CURVE), 0.6, 2.0, 16) == pytest.approx(12.0, rel=1e-12)


def test_resolution_takes_the_first_crossing_not_the_last():
    """A curve that dips below the threshold and recovers is cut at the dip:
    between shell 1 (0.9) and 2 (0.1) at f = 1.5 → 32 / 1.5 Å."""
    c = np.array([1.0, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert resolution_at(c, 0.5, 2.0, 16) == pytest.approx(32 / 1.5)


def test_resolution_edge_cases():
    """Never below the threshold → the Nyquist limit 2 · pixel size; below already at shell 1 →
    inf; a NaN shell counts as below, cut at the last shell above it; shell 0 (the mean) is ignored."""
    assert resolution_at(np.ones(9), 0.143, 2.0, 16) == pytest.approx(4.0)
    assert math.isinf(resolution_at(np.r_[1.0, np.zeros(8)], 0.143, 2.0, 16))
    assert resolution_at(np.r_[0.0, np.ones(8)], 0.143, 2.0, 16) == pytest.approx(4.0)
    c = CURVE.copy()
    c[3] = np.nan
    assert resolution_at(c, 0.6, 2.0, 16) == pytest.approx(32 / 2)  # cut at shell 2


def test_fsc_auc_self_is_half_and_unrelated_is_near_zero():
    """FSC-AUC (CryoBench): a map with itself has FSC ≡ 1 → area 0.5 cycles/px; independent noise maps ≈ 0."""
    from cryolens.metrics import fsc_auc

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 32, 32, generator=g), torch.randn(32, 32, 32, generator=g)
    assert fsc_auc(fsc(a, a), 32) == pytest.approx(0.5, abs=1e-9)
    assert abs(fsc_auc(fsc(a, b), 32)) < 0.04  # shell 0 (one voxel) alone can give ±0.5/32
    # a step curve: FSC 1 up to shell 8 then 0 → area 8/32 − half a trapezoid step (0.5/32)
    step = np.r_[np.ones(9), np.zeros(8)]
    assert fsc_auc(step, 32) == pytest.approx((8 + 0.5) / 32)

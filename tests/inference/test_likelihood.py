"""The Gaussian likelihood in Fourier space: its normalisation, the noise spectrum estimate, and the
expanded (matrix-product) form against the direct one."""

import math

import pytest
import torch

from cryolens.imaging.fft import fft2_centered, ifft2_centered
from cryolens.imaging.grids import shell_index_2d
from cryolens.imaging.noise import colored_noise
from cryolens.imaging.shift import phase_shift
from cryolens.inference.likelihood import (estimate_noise_spectrum, gaussian_log_likelihood, log_likelihood_table,
                                           log_normaliser, prepare_image_terms)


def _band_limited_real(n, d, g):
    """Real images whose transform is zero beyond shell D//2 (so Parseval holds on the kept shells)."""
    x = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    f = fft2_centered(x) * (shell_index_2d(d) <= d // 2)
    return ifft2_centered(f).real


def test_log_likelihood_is_the_real_space_gaussian_log_likelihood():
    """With σ²(k) = s²·D² (white real-space noise of variance s², unnormalised FFT), the Fourier-space
    sum −Σ|R|²/(2σ²) over the full plane equals the real-space −Σ r²/(2s²) (Parseval): the
    likelihood is neither tempered nor sharpened by a factor 2 from Friedel pairs."""
    d, s = 16, 0.7
    g = torch.Generator().manual_seed(1)
    r = _band_limited_real(4, d, g)
    sigma2 = torch.full((d // 2 + 1,), s * s * d * d, dtype=torch.float64)
    got = gaussian_log_likelihood(fft2_centered(r), torch.zeros(4, d, d, dtype=torch.complex128), sigma2)
    want = -(r**2).sum((-2, -1)) / (2 * s * s)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def _log_normal(x, var):
    return -0.5 * math.log(2 * math.pi * var) - x * x / (2 * var)


def test_log_normaliser_completes_the_density_of_the_independent_coordinates():
    """log-likelihood + log_normaliser = Σ log N(·) over the independent real coordinates of a real
    image's transform inside k_max (Re, Im of one of each Friedel pair with variance σ²/2; the
    self-conjugate components real with variance σ²), written out pixel by pixel."""
    d, k_max = 8, 4
    g = torch.Generator().manual_seed(2)
    y = fft2_centered(torch.randn(1, d, d, generator=g, dtype=torch.float64))
    sigma2 = 0.5 + torch.rand(d // 2 + 1, generator=g, dtype=torch.float64) * 40
    shells = shell_index_2d(d)
    want = 0.0
    for iy in range(d):
        for ix in range(d):
            if shells[iy, ix] > k_max:
                continue
            py, px = (d - iy) % d, (d - ix) % d  # Friedel partner in the centered layout
            var = float(sigma2[shells[iy, ix]])
            v = y[0, iy, ix]
            if (py, px) == (iy, ix):
                want += _log_normal(float(v.real), var)
            elif (iy, ix) < (py, px):
                want += _log_normal(float(v.real), var / 2) + _log_normal(float(v.imag), var / 2)
    got = gaussian_log_likelihood(y, torch.zeros_like(y), sigma2, k_max) + log_normaliser(sigma2, d, k_max)
    assert float(got[0]) == pytest.approx(want, rel=1e-12)


def test_noise_spectrum_recovers_a_coloured_spectrum():
    """Noise made with a known per-shell power shape (imaging.noise.colored_noise, which scales white
    noise's D²-per-component power by that shape) is estimated shell by shell within its sampling
    error; per-image weights select images exactly."""
    d, n, sigma = 16, 400, 2.0
    g = torch.Generator().manual_seed(3)
    k = torch.arange(d // 2 + 1, dtype=torch.float64)
    shape = 1 + 3 * torch.exp(-k / 3)
    noise = colored_noise(n, d, sigma, shape, generator=g, dtype=torch.float64)
    amp2 = shape[shell_index_2d(d).clamp_max(d // 2)]
    want = shape * sigma**2 * d * d / amp2.mean()
    got = estimate_noise_spectrum(noise)
    torch.testing.assert_close(got, want, rtol=0.25, atol=0)  # shell 0: one real pixel, rel. s.d. 0.07
    assert float((got / want).mean()) == pytest.approx(1.0, abs=0.03)
    # weights: zero weight on 10×-louder images leaves the estimate of the others
    loud = torch.cat([noise[:200], 10 * noise[200:]])
    w = torch.cat([torch.ones(200), torch.zeros(200)]).double()
    torch.testing.assert_close(estimate_noise_spectrum(loud, w), estimate_noise_spectrum(noise[:200]))


@pytest.mark.parametrize("per_image_shifts", [False, True])
@pytest.mark.parametrize("per_image_slices", [False, True])
def test_expanded_table_equals_direct_form(device, per_image_shifts, per_image_slices):
    """The matrix-product table (shift as a phase ramp on the image, |Y|² − 2Re(Y*CP) + C²|P|²) equals
    the direct −Σ|Y − C·shift(P)|²/(2σ²) with the shift applied to the prediction, for shared or
    per-image shifts and slices, with a CTF and a frequency limit."""
    d, b, t, m, k_max = 12, 3, 4, 5, 4
    g = torch.Generator().manual_seed(4)

    def crand(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                             torch.randn(*shape, generator=g, dtype=torch.float64)).to(device)

    y = crand(b, d, d)
    p = crand(b, m, d, d) if per_image_slices else crand(m, d, d)
    shifts = ((torch.rand(b, t, 2, generator=g, dtype=torch.float64) - 0.5) * 6).to(device)
    if not per_image_shifts:
        shifts = shifts[0]
    ctf = (torch.rand(b, d, d, generator=g, dtype=torch.float64) * 2 - 1).to(device)
    sigma2 = (0.5 + torch.rand(d // 2 + 1, generator=g, dtype=torch.float64)).to(device)

    terms = prepare_image_terms(y, sigma2, shifts, ctf, k_max)
    table = log_likelihood_table(terms, p)
    assert table.shape == (b, t, m)
    direct = torch.empty(b, t, m, dtype=torch.float64, device=device)
    for i in range(b):
        for j in range(t):
            sh = shifts[i, j] if per_image_shifts else shifts[j]
            pi = p[i] if per_image_slices else p
            pred = phase_shift(pi, sh.expand(m, 2))  # (M, D, D)
            direct[i, j] = gaussian_log_likelihood(y[i:i + 1], pred[None], sigma2, k_max, ctf[i:i + 1])[0]
    torch.testing.assert_close(table, direct, rtol=1e-10, atol=1e-9)

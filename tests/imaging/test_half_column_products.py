"""The insertion's products on the half columns (half_column_products) equal the full-grid formulation (centred
transform, shift undone, times the CTF; the CTF squared) on every column the half insertion reads, in float64 —
including the −Nyquist column, whose phase ramp uses kx = −½ as the full layout does — and are zero elsewhere."""

import numpy as np
import torch

from cryolens.imaging import CTFParams
from cryolens.imaging.ctf import ctf_2d
from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.half_grid import half_column_products
from cryolens.imaging.shift import phase_shift
from cryolens.imaging.slice import _half_columns


def test_half_column_products_equal_the_full_grid_products():
    d, px, n = 12, 1.7, 3
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    shifts = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 6
    du = 9000 + 5000 * torch.rand(n, generator=g, dtype=torch.float64)
    ctf = CTFParams.create(du, du - 400, torch.rand(n, generator=g, dtype=torch.float64), 300, 2.7, 0.1)
    values, weights = half_column_products(images, shifts, ctf, px)
    c = ctf_2d(ctf, d, px, dtype=torch.float64)
    want_v = phase_shift(fft2_centered(images), -shifts) * c
    cols = _half_columns(d, "cpu")
    np.testing.assert_allclose(values[..., cols].numpy(), want_v[..., cols].numpy(), atol=1e-10)
    np.testing.assert_allclose(weights[..., cols].numpy(), (c * c)[..., cols].numpy(), atol=1e-12)
    others = torch.ones(d, dtype=torch.bool)
    others[cols] = False
    assert float(values[..., others].abs().max()) == 0.0 and float(weights[..., others].abs().max()) == 0.0
    v0, w0 = half_column_products(images, None, None, px)  # no shifts, no CTF
    np.testing.assert_allclose(v0[..., cols].numpy(), fft2_centered(images)[..., cols].numpy(), atol=1e-10)
    assert float((w0[..., cols] - 1).abs().max()) == 0.0

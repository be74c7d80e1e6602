"""gaussian_blur_3d against the sampled Gaussian (closed form)."""

import math

import torch

from cryolens.imaging.grids import gaussian_blur_3d


def test_gaussian_blur_3d_of_a_point_is_the_sampled_gaussian():
    """The blur of a unit point at the centre of a 24³ box is the normalised 3D Gaussian of σ 1.5 px sampled on
    the grid (the periodic wrap is negligible); σ 0 leaves the volume unchanged."""
    x = torch.zeros(24, 24, 24, dtype=torch.float64)
    x[12, 12, 12] = 1
    r = torch.arange(24.0, dtype=torch.float64) - 12
    r2 = r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2
    ref = torch.exp(-r2 / (2 * 1.5**2)) / (2 * math.pi * 1.5**2) ** 1.5
    assert torch.allclose(gaussian_blur_3d(x, 1.5), ref, atol=1e-7)
    assert gaussian_blur_3d(x, 0.0) is x

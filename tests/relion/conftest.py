"""Tests against RELION 3.1 programs (relion_project, relion_reconstruct, relion_image_handler).

Every test module here sets ``pytestmark = pytest.mark.relion``; the gate that skips or fails
them without RELION is in ``tests/conftest.py``.
"""

import pytest
import torch

from cryolens.imaging import gaussian_volume

D = 32
PIXEL_SIZE = 1.5


@pytest.fixture
def smooth_volume():
    """``(32, 32, 32)`` float64: four Gaussians off-centre, no symmetry (σ ≈ 2 voxels)."""
    centers = torch.tensor([[4.0, -3.0, 6.0], [-6.0, 5.0, -2.0], [1.0, 8.0, 3.0], [-3.0, -6.0, -5.0]],
                           dtype=torch.float64)
    sigmas = torch.tensor([2.0, 2.5, 1.8, 2.2], dtype=torch.float64)
    amps = torch.tensor([1.0, 0.7, 1.3, 0.9], dtype=torch.float64)
    return gaussian_volume(centers, sigmas, amps, D)


@pytest.fixture
def detailed_volume():
    """``(32, 32, 32)`` float64: twelve sharp Gaussians (σ ≈ 1 voxel) with power up to Nyquist,
    for reconstructions compared shell by shell."""
    g = torch.Generator().manual_seed(5)
    centers = ((torch.rand(12, 3, generator=g) - 0.5) * 16).double()
    sigmas = (0.9 + 0.4 * torch.rand(12, generator=g)).double()
    amps = (0.5 + torch.rand(12, generator=g)).double()
    return gaussian_volume(centers, sigmas, amps, D)

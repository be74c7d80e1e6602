"""Small test volumes and images for the inference tests."""

import torch

from cryolens.imaging.gaussian import gaussian_volume
from cryolens.imaging.slice import prepare_volume_ft


def blob_volume(size: int, n_blobs: int = 20, seed: int = 0, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """An asymmetric ``(D, D, D)`` volume: ``n_blobs`` Gaussians of width ``D/24``–``D/12`` voxels at
    random positions within ±0.28·D of the centre."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n_blobs, 3, generator=g, dtype=torch.float64) - 0.5) * size * 0.55
    sigmas = torch.full((n_blobs,), size / 24, dtype=torch.float64) * (1 + torch.rand(n_blobs, generator=g,
                                                                                       dtype=torch.float64))
    amps = torch.rand(n_blobs, generator=g, dtype=torch.float64) + 0.5
    return gaussian_volume(centres, sigmas, amps, size).to(device=device, dtype=dtype)


def blob_volume_ft(size: int, seed: int = 0, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Twice-oversampled centered transform of :func:`blob_volume`."""
    return prepare_volume_ft(blob_volume(size, seed=seed, device=device, dtype=dtype))

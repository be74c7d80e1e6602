"""A generator of maps: a small convolutional voxel decoder ``z (B, L) → V(z) (B, D, D, D)`` (Multi-CryoGAN's
"manifold mapping" generator; its architecture is ours, docs/METHODS.md).

``V(z) = softplus_β(base + Δ(z))``, with ``softplus_β(x) = log(1 + e^{βx}) / β``: positive and, unlike a
ReLU, never without a gradient, so no voxel dies (measured: a ReLU left 5–15 % of a fitted map's power out
of reach). ``base (D, D, D)`` is a learned grid (every voxel of the map at ``init`` at the start); ``Δ(z)`` is
decoded by an MLP to ``channels`` feature grids of ``D/4`` voxels a side, then two blocks of trilinear
up-sampling ×2 and a 3×3×3 convolution (LeakyReLU 0.2 between them). The last convolution starts at zero,
so every ``z`` starts at the base map.
Maps are real space ``[z, y, x]`` in the units of the images the model is trained on. Homogeneous use:
none (``zdim ≥ 1``). ``maps`` is differentiable; ``render`` is detached (the volume protocol's output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class VoxelDecoder(nn.Module):
    """``z (B, L) → (B, D, D, D)`` maps (module docstring). box_size: ``D`` (a multiple of 4). zdim: ``L``.
    channels: feature grids at ``D/4``. hidden: width of the MLP. init: every voxel's starting value (map
    units). beta: sharpness of the softplus (``1/β``: the width of its soft corner, map units). equal_mass:
    every map is rescaled to the total of the base map's ``softplus(base)``, so that ``z`` moves density
    rather than scaling it (conformations; not for compositional heterogeneity, whose states differ in mass)."""

    def __init__(self, box_size: int, zdim: int, channels: int = 16, hidden: int = 64, init: float = 1e-3,
                 beta: float = 50.0, equal_mass: bool = False):
        super().__init__()
        self.equal_mass = bool(equal_mass)
        d, c = int(box_size), int(channels)
        if d % 4 or zdim < 1:
            raise ValueError(f"VoxelDecoder: box {d} must be a multiple of 4 and zdim {zdim} ≥ 1")
        self.box_size, self.zdim, self.channels, self.coarse = d, int(zdim), c, d // 4
        self.beta = float(beta)
        self.base = nn.Parameter(torch.full((d, d, d), math.log(math.expm1(self.beta * init)) / self.beta))
        self.mlp = nn.Sequential(nn.Linear(self.zdim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, c * self.coarse**3))
        self.conv1 = nn.Conv3d(c, max(c // 2, 1), 3, padding=1)
        self.conv2 = nn.Conv3d(max(c // 2, 1), 1, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def maps(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D, D, D)`` positive maps at ``z (B, L)`` (differentiable)."""
        if z is None:
            raise ValueError("VoxelDecoder.maps needs z (B, L)")
        h = self.mlp(z).reshape(-1, self.channels, self.coarse, self.coarse, self.coarse)
        h = F.leaky_relu(self.conv1(F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)), 0.2)
        delta = self.conv2(F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False))[:, 0]
        maps = F.softplus(self.base + delta, beta=self.beta)
        if self.equal_mass:
            mass = F.softplus(self.base, beta=self.beta).sum()
            maps = maps * (mass / maps.sum((-3, -2, -1), keepdim=True).clamp_min(1e-12))
        return maps

    def render(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Detached maps ``(B, D, D, D)`` float32 at ``z (B, L)``."""
        with torch.no_grad():
            return self.maps(z).float()

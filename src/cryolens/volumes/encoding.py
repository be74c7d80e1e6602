"""Positional encodings of 3D frequency coordinates for implicit neural volumes.

Coordinates are frequencies in cycles/px, ``(kx, ky, kz)`` in ``[−0.5, 0.5]`` (docs/CONVENTIONS.md).

- ``geometric``: ``sin(2π ω_j k_a)``, ``cos(2π ω_j k_a)`` for each axis ``a`` and ``n`` wavenumbers
  ``ω_j = (D/2)^{j/(n−1)}``, ``j = 0 … n−1``, geometrically spaced from 1 to ``D/2`` (the highest
  feature changes sign between neighbouring lattice points: Nyquist). cryoDRGN's old default
  (``geom_lowf``-like).
- ``gaussian``: random Fourier features ``sin(k · b_j)``, ``cos(k · b_j)`` for ``3n`` vectors
  ``b_j ~ N(0, (σ · D/2)² I)`` (radians per cycle/px), fixed at construction (a buffer, saved with the
  weights). cryoDRGN 4's default with ``feat_sigma σ = 0.5``.

Both also pass the raw coordinates through, so the encoding has ``6n + 3`` features.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    """``coords (..., 3)`` cycles/px → ``(..., 6n + 3)`` features (module docstring).

    box_size: ``D``. kind: ``"geometric"`` or ``"gaussian"``. n: wavenumbers per axis (default ``D//2``).
    feat_sigma: ``σ`` of the Gaussian features in units of ``D/2``. seed: draws the Gaussian features.
    """

    def __init__(self, box_size: int, kind: str = "gaussian", n: int | None = None, feat_sigma: float = 0.5,
                 seed: int = 0):
        super().__init__()
        if kind not in ("geometric", "gaussian"):
            raise ValueError(f"positional encoding must be 'geometric' or 'gaussian', got {kind!r}")
        self.kind = kind
        self.n = int(n or box_size // 2)
        half = box_size / 2
        if kind == "geometric":
            j = torch.arange(self.n, dtype=torch.float64)
            omega = half ** (j / max(self.n - 1, 1))
            # radians per cycle/px: 2π · wavenumber; (3, 3n) block-diagonal so that coords @ B is per axis
            b = torch.zeros(3, 3 * self.n, dtype=torch.float64)
            for a in range(3):
                b[a, a * self.n:(a + 1) * self.n] = 2 * math.pi * omega
        else:
            g = torch.Generator().manual_seed(int(seed))
            b = torch.randn(3, 3 * self.n, generator=g, dtype=torch.float64) * feat_sigma * half
        self.register_buffer("freqs", b.float())

    @property
    def out_dim(self) -> int:
        return 6 * self.n + 3

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        phase = coords @ self.freqs.to(coords.dtype)  # cycles/px · radians/(cycle/px) = radians
        return torch.cat([torch.sin(phase), torch.cos(phase), coords], dim=-1)

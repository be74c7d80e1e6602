"""Amortized and non-amortized inference of the conformation ``z``.

- :class:`MLPEncoder`: cryoDRGN's encoder, a residual MLP on the Hartley pixels of the centred,
  normalised image inside the Nyquist circle (:class:`~cryolens.volumes.lattice.SliceLattice`)
  → ``(μ, log σ²)`` of ``q(z | image)``.
- :class:`CNNEncoder`: a small convolutional option on the real-space image (back-transformed from the
  same Hartley input).
- :class:`LatentTable`: the autodecoder — one free ``z`` per image (cryoDRGN ``train_dec``: a point,
  i.e. modal, estimate), or with ``variational=True`` a mean and a log-variance per image (a
  non-amortized Gaussian ``q_i(z)``, review C.4.2).
"""

from __future__ import annotations

import torch
from torch import nn

from ..imaging.fft import hartley2
from ..volumes.lattice import SliceLattice
from ..volumes.mlp import ResidualMLP


class MLPEncoder(nn.Module):
    """``hartley (B, D, D)`` centred normalised Hartley images → ``(μ, logvar)``, each ``(B, zdim)``."""

    def __init__(self, lattice: SliceLattice, zdim: int, layers: int = 3, hidden: int = 1024):
        super().__init__()
        self.register_buffer("pixels", lattice.pixels.clone(), persistent=False)
        self.zdim = int(zdim)
        self.mlp = ResidualMLP(len(lattice), layers, hidden, 2 * self.zdim)

    def forward(self, hartley: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(hartley.flatten(-2)[..., self.pixels])
        return out[..., :self.zdim], out[..., self.zdim:]


class CNNEncoder(nn.Module):
    """``hartley (B, D, D)`` → ``(μ, logvar)``: the real-space image (inverse Hartley transform) through
    stride-2 3×3 convolutions (``channels`` doubling) to ``4 × 4``, then two linear layers."""

    def __init__(self, box_size: int, zdim: int, channels: int = 32, hidden: int = 256):
        super().__init__()
        layers, c_in, d = [], 1, int(box_size)
        c = channels
        while d > 4:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in, c, d = c, min(2 * c, 256), (d + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.zdim = int(zdim)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * d * d, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 2 * self.zdim))

    def forward(self, hartley: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d2 = hartley.shape[-1] * hartley.shape[-2]
        image = hartley2(hartley) / d2  # the Hartley transform is its own inverse up to 1/D²
        out = self.head(self.conv(image[:, None]))
        return out[..., :self.zdim], out[..., self.zdim:]


class LatentTable(nn.Module):
    """Per-image latents: ``forward(index (B,)) → (μ (B, L), logvar (B, L) | None)``.

    ``variational=False``: one point ``z_i`` per image (logvar ``None``); ``True``: ``μ_i`` and
    ``logvar_i`` per image. ``init_logvar``: starting log-variance of the variational table."""

    def __init__(self, n: int, zdim: int, variational: bool = False, init_std: float = 0.1,
                 init_logvar: float = -4.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.mu = nn.Parameter(torch.randn(n, zdim, generator=g) * init_std)
        self.logvar = nn.Parameter(torch.full((n, zdim), float(init_logvar))) if variational else None

    def forward(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.mu[index], (None if self.logvar is None else self.logvar[index])

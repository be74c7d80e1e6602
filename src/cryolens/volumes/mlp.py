"""The residual MLP of cryoDRGN's decoders and encoders (``ResidLinearMLP``)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """``(..., in_dim) → (..., out_dim)``: ``ReLU(Linear(in_dim → hidden))``, then ``layers`` residual
    blocks ``h + ReLU(W h + b)``, then ``Linear(hidden → out_dim)`` (cryoDRGN's ``nlayers``; "3 × 1024"
    is ``layers=3, hidden=1024``)."""

    def __init__(self, in_dim: int, layers: int, hidden: int, out_dim: int):
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out(h)

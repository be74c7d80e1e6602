"""The residual MLP of cryoDRGN's decoders and encoders (``ResidLinearMLP``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., in_dim)``; or, with ``cond (B, C)``, ``x (B, M, in_dim − C)`` and the result the
        same as of ``cat([x, cond broadcast to every row])`` (:meth:`first_layer`)."""
        h = torch.relu(self.inp(x) if cond is None else self.first_layer(x, cond))
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return self.out(h)

    def first_layer(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The first linear layer on ``[x, cond]`` without forming it: ``x (B, M, n)`` rows of ``B``
        items, ``cond (B, C)`` one vector per item shared by its ``M`` rows (``n + C = in_dim``), e.g. a
        neural volume's points and its conformation ``z``. The weight splits, ``[x, c] Wᵀ + b =
        x W_xᵀ + (c W_cᵀ + b)``: ``c`` is multiplied once per item, not once per row, and its gradient is
        the row sum of the layer's output gradient times ``W_c`` — so when ``x`` needs no gradient (fixed
        points) the ``(B·M) × hidden × in_dim`` input-gradient product of the concatenated form is
        never computed. Returns the pre-activation ``(B, M, hidden)``."""
        n, w = x.shape[-1], self.inp.weight
        if x.dim() != 3 or cond.dim() != 2 or cond.shape[0] != x.shape[0] or n + cond.shape[-1] != w.shape[1]:
            raise ValueError(f"first_layer: x (B, M, n) and cond (B, C) with n + C = {w.shape[1]}, got "
                             f"{tuple(x.shape)} and {tuple(cond.shape)}")
        per_item = F.linear(cond, w[:, n:], self.inp.bias)  # (B, hidden)
        return torch.baddbmm(per_item.unsqueeze(1), x, w[:, :n].t().expand(x.shape[0], -1, -1))

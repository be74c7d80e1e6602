"""Local resolution by a windowed FSC between two half maps (as blocres / cryoSPARC's local resolution,
in its simplest form).

At every centre of a regular grid (``step`` px apart, the first at ``step // 2``) both half maps are
multiplied by the same soft spherical window (radius ``radius`` px, raised-cosine edge of ``edge`` px)
around it; the FSC of the two windowed maps (:func:`~cryolens.metrics.fsc.fsc`, docs/CONVENTIONS.md "FSC
and resolution") gives that centre's resolution at ``threshold`` (0.143 between half maps). The map holds
each voxel's nearest centre's value. No correction is made for the window's own correlation; a window
too small for its content reads as low resolution.
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.grids import coord_grid_3d, soft_edge
from .fsc import fsc, resolution_at


def local_resolution(half1: torch.Tensor | np.ndarray, half2: torch.Tensor | np.ndarray, pixel_size: float,
                     radius: float = 6.0, step: int = 4, edge: float = 3.0, threshold: float = 0.143,
                     mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """``(D, D, D)`` float32 local resolution (Å) of half maps ``(D, D, D)`` ``[z, y, x]`` with ``pixel_size``
    Å/px (module docstring). ``mask``: where it is ≤ 0.5 the value is NaN (e.g. solvent)."""
    a = torch.as_tensor(np.asarray(half1), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(half2), dtype=torch.float64)
    d = a.shape[-1]
    r = coord_grid_3d(d, dtype=torch.float64)  # (x, y, z) relative to the centre, indexed [z, y, x]
    centres = torch.arange(step // 2, d, step, dtype=torch.float64) - d // 2
    coarse = torch.empty(len(centres), len(centres), len(centres), dtype=torch.float64)
    for i, cz in enumerate(centres):
        for j, cy in enumerate(centres):
            for k, cx in enumerate(centres):
                dist = (r - torch.stack([cx, cy, cz])).norm(dim=-1)
                w = soft_edge(dist, radius, edge)
                coarse[i, j, k] = resolution_at(fsc(a * w, b * w), threshold, pixel_size, d)
    near = ((torch.arange(d) - step // 2 + step / 2) // step).clamp(0, len(centres) - 1).long()
    out = coarse[near][:, near][:, :, near].float()
    if mask is not None:
        out = torch.where(torch.as_tensor(np.asarray(mask)) > 0.5, out, torch.full_like(out, float("nan")))
    return out

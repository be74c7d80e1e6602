"""Local resolution by a windowed FSC between two half maps (as blocres / cryoSPARC's local resolution,
in its simplest form).

At every centre of a regular grid (``step`` px apart, the first at ``step // 2``) both half maps are
multiplied by the same soft spherical window (radius ``radius`` px, raised-cosine edge of ``edge`` px)
around it and cut to a cube of side ``C`` (:func:`window_box`: the window's support and a margin, as
blocres's box; the whole map when that is not smaller) centred on it; the FSC of the two windowed cubes
(:func:`~cryolens.metrics.fsc.fsc`, docs/CONVENTIONS.md "FSC and resolution", shells of ``1 / (C ·
pixel_size)``) gives that centre's resolution at ``threshold`` (0.143 between half maps). Outside the
window both products are zero, so the cube's transform samples the same spectrum as the whole box's,
more coarsely; the cut makes the cost per centre independent of the map's size (D = 64: 4,096 centres in
seconds instead of minutes). The map holds each voxel's nearest centre's value. No correction is made for
the window's own correlation; a window too small for its content reads as low resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..imaging.grids import coord_grid_3d, soft_edge
from .fsc import fsc, resolution_at


def window_box(radius: float, edge: float, size: int) -> int:
    """Side ``C`` (px, even) of the cube each window is cut to: its support ``radius + edge`` on each side
    of the centre and one voxel of margin, at most the map's ``size``."""
    return min(size, 2 * math.ceil(radius + edge) + 2)


def local_resolution(half1: torch.Tensor | np.ndarray, half2: torch.Tensor | np.ndarray, pixel_size: float,
                     radius: float = 6.0, step: int = 4, edge: float = 3.0, threshold: float = 0.143,
                     mask: torch.Tensor | np.ndarray | None = None, chunk: int = 256) -> torch.Tensor:
    """``(D, D, D)`` float32 local resolution (Å) of half maps ``(D, D, D)`` ``[z, y, x]`` with ``pixel_size``
    Å/px (module docstring). ``mask``: where it is ≤ 0.5 the value is NaN (e.g. solvent). ``chunk``:
    windows transformed together."""
    a = torch.as_tensor(np.asarray(half1), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(half2), dtype=torch.float64)
    d = a.shape[-1]
    c = window_box(radius, edge, d)
    w = soft_edge(coord_grid_3d(c, dtype=torch.float64).norm(dim=-1), radius, edge)  # centred at voxel c // 2
    pad = c // 2
    a, b = (torch.nn.functional.pad(x, (pad,) * 6) for x in (a, b))  # zeros: the map ends there
    idx = torch.arange(step // 2, d, step)  # centre voxels (the box centre is voxel d // 2)
    n = len(idx)
    corners = torch.cartesian_prod(idx, idx, idx)  # (n³, 3) [z, y, x]: each cube starts at the centre - c//2 + pad
    offs = torch.arange(c)
    coarse = torch.empty(n ** 3, dtype=torch.float64)
    for s0 in range(0, n ** 3, chunk):
        cz, cy, cx = corners[s0:s0 + chunk].unbind(1)
        zz = (cz[:, None] + offs)[:, :, None, None]
        yy = (cy[:, None] + offs)[:, None, :, None]
        xx = (cx[:, None] + offs)[:, None, None, :]
        curves = fsc(a[zz, yy, xx] * w, b[zz, yy, xx] * w)  # (chunk, C//2 + 1)
        coarse[s0:s0 + len(cz)] = torch.as_tensor([resolution_at(cv, threshold, pixel_size, c) for cv in curves])
    coarse = coarse.reshape(n, n, n)
    near = ((torch.arange(d) - step // 2 + step / 2) // step).clamp(0, n - 1).long()
    out = coarse[near][:, near][:, :, near].float()
    if mask is not None:
        out = torch.where(torch.as_tensor(np.asarray(mask)) > 0.5, out, torch.full_like(out, float("nan")))
    return out

"""Cyclic point groups and the pseudo-symmetry axis of a map, for symmetry relaxation.

A map ``V`` is symmetric under a rotation ``G`` (acting on ``(x, y, z)`` about the box centre ``D//2``)
when ``V(Gᵀ x) = V(x)``. Then the image of ``V`` at pose ``R`` (image → volume frame) equals its image at
``G R``: the poses ``{G R}`` of the group are the *mates* of ``R``. A pseudo-symmetric particle (a homodimer
whose chains differ a little, or carry one ligand) has mates that are almost but not quite equivalent, and
a refinement whose local searches never look at them keeps whatever mixture of mates it started from.
RELION 4's ``--relax_sym`` searches the mates too (the map itself stays unsymmetrized); for that the axes
must be known in the map's frame, which :func:`symmetry_axis` finds for a cyclic group ``Cn`` from the map
itself (an ab initio map's frame is arbitrary).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from ..errors import InputError
from .grids import coord_grid_3d
from .rotations import rotvec_to_matrix


def cyclic_order(group: str) -> int:
    """``n`` of a cyclic point group name ``"Cn"`` (``"C1"`` → 1). Other groups: :class:`InputError`."""
    m = re.fullmatch(r"[cC](\d+)", str(group).strip())
    if not m or int(m.group(1)) < 1:
        raise InputError(f"symmetry {group!r}: only cyclic groups Cn (C1, C2, C3, ...) are supported here")
    return int(m.group(1))


def cyclic_operators(n: int, axis: torch.Tensor) -> torch.Tensor:
    """The ``n − 1`` non-identity rotations of ``Cn`` about ``axis (3,)`` (``(x, y, z)``, any length):
    ``(n − 1, 3, 3)`` float64, by ``2πk/n``, ``k = 1 … n − 1``."""
    u = torch.as_tensor(axis, dtype=torch.float64)
    u = u / u.norm()
    k = torch.arange(1, n, dtype=torch.float64)
    return rotvec_to_matrix((2 * math.pi * k / n)[:, None] * u[None])


def _fibonacci_hemisphere(count: int) -> torch.Tensor:
    """``(count, 3)`` unit vectors spread evenly over the upper hemisphere (``z ≥ 0``)."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - i / count
    phi = i * math.pi * (3 - math.sqrt(5))
    r = (1 - z * z).clamp_min(0).sqrt()
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)


def _near(axis: torch.Tensor, max_angle: float, step: float) -> torch.Tensor:
    """Unit vectors within ``max_angle`` rad of ``axis`` on a square grid of ``step`` rad (tangent plane)."""
    u = axis / axis.norm()
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) if abs(float(u[0])) < 0.9 else \
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = torch.linalg.cross(u, a)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(u, e1)
    t = torch.arange(-max_angle, max_angle + 1e-12, step, dtype=torch.float64)
    gx, gy = torch.meshgrid(t, t, indexing="ij")
    keep = gx.square() + gy.square() <= max_angle ** 2 + 1e-12
    v = u[None] + torch.tan(gx[keep])[:, None] * e1 + torch.tan(gy[keep])[:, None] * e2
    return v / v.norm(dim=1, keepdim=True)


def _rotated(volume: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(K, D, D, D)``: ``V(G_kᵀ x)`` for ``g (K, 3, 3)``, trilinear, about ``D//2``, zero outside."""
    d = volume.shape[-1]
    c = d // 2
    pts = coord_grid_3d(d, volume.device, volume.dtype).reshape(-1, 3)  # (D³, 3) (x, y, z) from D//2
    src = torch.einsum("kji,pj->kpi", g.to(volume.dtype), pts) + c  # Gᵀ x, in voxel indices
    grid = (2 * src / (d - 1) - 1).reshape(-1, d, d, d, 3)  # grid_sample's (x, y, z), align_corners=True
    vol = volume[None, None].expand(g.shape[0], 1, d, d, d)
    return F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


def symmetry_scores(volume: torch.Tensor, n: int, axes: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``(A,)`` mean over the ``n − 1`` operators of ``Cn`` about each of ``axes (A, 3)`` of the Pearson
    correlation between ``volume (D, D, D)`` and its rotated copy, inside the sphere of radius ``D/2 − 1``
    about ``D//2`` (1 for an exactly symmetric map, up to interpolation)."""
    d = volume.shape[-1]
    v = volume.detach().to(torch.float32)
    inside = coord_grid_3d(d, v.device, v.dtype).norm(dim=-1) <= d / 2 - 1
    a = v[inside] - v[inside].mean()
    out = []
    for s in range(0, axes.shape[0], chunk):
        ops = torch.stack([cyclic_operators(n, u) for u in axes[s:s + chunk]])  # (A', n−1, 3, 3)
        rot = _rotated(v, ops.reshape(-1, 3, 3).to(v.device))[:, inside]  # (A'·(n−1), P)
        b = rot - rot.mean(1, keepdim=True)
        corr = (b @ a) / (b.norm(dim=1) * a.norm()).clamp_min(1e-30)
        out.append(corr.reshape(-1, n - 1).mean(1).double().cpu())
    return torch.cat(out)


def symmetry_axis(volume: torch.Tensor, n: int, coarse: int = 600, refinements: int = 3) -> tuple[torch.Tensor, float]:
    """The axis ``(3,)`` (``(x, y, z)``, unit, float64) through the box centre ``D//2`` about which
    ``volume (D, D, D)`` ``[z, y, x]`` is closest to ``Cn``-symmetric, and its :func:`symmetry_scores`
    score. Search: ``coarse`` directions over the hemisphere (an axis and its opposite give the same group),
    then ``refinements`` rounds on a finer grid about the best (each one a third of the last step). The
    map should be centred on its centre of mass: the axis passes through the box centre."""
    if n < 2:
        raise InputError(f"C{n} has no symmetry axis to find")
    axes = _fibonacci_hemisphere(coarse)
    scores = symmetry_scores(volume, n, axes)
    best = int(scores.argmax())
    axis, score = axes[best], float(scores[best])
    step = math.sqrt(2 * math.pi / coarse)  # the spacing of the coarse directions, rad
    for _ in range(refinements):
        cand = _near(axis, step, step / 3)
        s = symmetry_scores(volume, n, cand)
        if float(s.max()) > score:
            axis, score = cand[int(s.argmax())], float(s.max())
        step /= 3
    return axis / axis.norm(), score

"""Convection of a real-space density along a displacement field given on a coarse vertex grid
(3DFlex's deformation, docs/METHODS.md "3DFlex"), its explicit adjoint, and its real-space projection.

Geometry (docs/CONVENTIONS.md, "Arrays and indexing"): a map is ``(D, D, D)`` indexed ``[z, y, x]``;
a point is ``(x, y, z)`` in px relative to the box centre (voxel ``D // 2``). A **flow** is
``(B, 3, n+1, n+1, n+1)`` float: the displacement ``(ux, uy, uz)`` in px at the vertices of a regular
grid of ``n`` cells per axis spanning the box, vertex ``k`` at ``−D/2 + k·D/n`` px on every axis
(indexed ``[c, kz, ky, kx]``); between vertices it is interpolated trilinearly (exact for an affine
field), outside the box it takes the border value.

Convection is the **pull-back** ``V(x) = V0(x − u(x))``: every output point looks up the canonical map
``V0`` (trilinear, zero outside the box) at its displaced source point. It is linear in ``V0`` for a
fixed flow; :func:`convect_adjoint` is its transpose (a trilinear splat), the operator a least-squares
reconstruction of ``V0`` with the flows held fixed applies to residuals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grids import coord_grid_3d


def sample_flow(flow: torch.Tensor, points: torch.Tensor, box_size: int) -> torch.Tensor:
    """Displacements ``(B, P, 3)`` px ``(ux, uy, uz)`` at ``points (B, P, 3)`` px (module docstring),
    trilinear in the vertex grid ``flow (B, 3, n+1, n+1, n+1)``."""
    b, p = points.shape[:2]
    grid = (points * (2.0 / box_size)).reshape(b, 1, 1, p, 3).to(flow.dtype)
    u = F.grid_sample(flow, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return u[:, :, 0, 0].transpose(1, 2)


def sample_volume(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``(B, P)`` of ``volume (D, D, D)`` ``[z, y, x]`` at ``points (B, P, 3)`` px
    relative to the centre (zero outside the box)."""
    d = volume.shape[-1]
    b, p = points.shape[:2]
    grid = ((2 * (points + d // 2) + 1) / d - 1).reshape(b, 1, 1, p, 3).to(volume.dtype)
    out = F.grid_sample(volume[None, None].expand(b, -1, -1, -1, -1), grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out[:, 0, 0, 0]


def convect(volume: torch.Tensor, flow: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``V(x) = V0(x − u(x))`` ``(B, P)`` at ``points (B, P, 3)`` px for the canonical ``volume (D, D, D)``
    and ``flow (B, 3, n+1, n+1, n+1)`` px (module docstring). Differentiable in both."""
    return sample_volume(volume, points - sample_flow(flow, points, volume.shape[-1]))


def convect_adjoint(values: torch.Tensor, flow: torch.Tensor, points: torch.Tensor, box_size: int) -> torch.Tensor:
    """The transpose of :func:`convect` in ``V0``: ``values (B, P)`` at ``points (B, P, 3)`` splatted with
    the same trilinear weights onto a ``(D, D, D)`` map (weights of source points outside the box dropped,
    as the zero padding of the forward sampling)."""
    d = int(box_size)
    src = points - sample_flow(flow, points, d)
    pos = (src + d // 2).reshape(-1, 3).to(values.dtype)  # continuous voxel index (x, y, z)
    base = pos.floor()
    frac = pos - base
    base = base.long()
    vals = values.reshape(-1)
    out = values.new_zeros(d * d * d)
    for corner in range(8):
        offs = torch.tensor([(corner >> a) & 1 for a in range(3)], device=pos.device)
        idx = base + offs
        w = torch.where(offs.bool(), frac, 1 - frac).prod(-1)
        ok = ((idx >= 0) & (idx < d)).all(-1)
        flat = (idx[:, 2] * d + idx[:, 1]) * d + idx[:, 0]
        out.index_add_(0, flat[ok], (w * vals)[ok])
    return out.reshape(d, d, d)


def voxel_points(box_size: int, batch: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """The voxel centres as points ``(batch, D³, 3)`` px ``(x, y, z)``, in ``[z, y, x]`` raster order."""
    pts = coord_grid_3d(box_size, device=device, dtype=dtype).reshape(1, -1, 3)
    return pts.expand(batch, -1, -1)


def project_convected(volume: torch.Tensor, flow: torch.Tensor, rotations: torch.Tensor,
                      chunk: int = 8) -> torch.Tensor:
    """Projections ``(B, D, D)`` ``[n, y, x]`` of the convected maps: ``image(x, y) = Σ_z V(R·[x, y, z]ᵀ)``
    (the real-space projection of :func:`~cryolens.imaging.project.project_real`, one-voxel steps) with
    ``V`` the convection of ``volume (D, D, D)`` along ``flow (B, 3, n+1, n+1, n+1)``, each image under
    its ``rotations (B, 3, 3)`` (image → volume frame). The convected map is never resampled onto the
    voxel grid: flow and ``V0`` are both sampled at the rotated ray points."""
    d = volume.shape[-1]
    pts = coord_grid_3d(d, device=volume.device, dtype=volume.dtype).reshape(-1, 3)
    outs = []
    for s in range(0, rotations.shape[0], chunk):
        rot = rotations[s:s + chunk].to(volume.dtype)
        q = torch.einsum("pj,nij->npi", pts, rot)  # volume-frame points, image-frame raster [z, y, x]
        v = convect(volume, flow[s:s + chunk], q)
        outs.append(v.reshape(-1, d, d, d).sum(dim=1))
    return torch.cat(outs) if outs else volume.new_zeros((0, d, d))


def unconvect(volume: torch.Tensor, flow: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """The inverse of :func:`convect` on the voxel grid: the canonical map ``V0 (D, D, D)`` whose convection along
    ``flow (1, 3, n+1, n+1, n+1)`` px is ``volume (D, D, D)``, ``V0(y) = V(x)`` at the point ``x`` that the
    pull-back sends to ``y`` (``x − u(x) = y``), found by the fixed-point iteration ``x ← y + u(x)`` from
    ``x = y`` (``iterations`` steps; it converges where the flow's gradient is below 1, which the rigidity
    prior keeps). Trilinear in ``volume``, zero outside the box."""
    d = volume.shape[-1]
    y = voxel_points(d, 1, volume.device, volume.dtype)
    x = y
    for _ in range(int(iterations)):
        x = y + sample_flow(flow, x, d)
    return sample_volume(volume, x).reshape(d, d, d)

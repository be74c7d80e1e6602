"""Real-space projection: rotate the volume, then integrate along the beam (z).

``image(x, y) = Σ_z V(R · [x, y, z]ᵀ)`` with trilinear sampling of ``V`` (voxel units, centre
``D//2``). The sum over the ``D`` samples along z approximates the line integral with a
step of one voxel. This is the real-space twin (review Eq. 1) of the Fourier-slice projector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grids import coord_grid_3d


def project_real(volume: torch.Tensor, rotations: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Projections ``(N, D, D)`` of a real ``(D, D, D)`` volume ``[z, y, x]`` under
    ``rotations (N, 3, 3)`` (image frame → volume frame)."""
    d = volume.shape[-1]
    pts = coord_grid_3d(d, device=volume.device, dtype=volume.dtype)  # (z, y, x, 3) image frame
    vol = volume[None, None]
    outs = []
    for start in range(0, rotations.shape[0], chunk):
        rot = rotations[start:start + chunk].to(volume.dtype)
        q = torch.einsum("zyxj,nij->nzyxi", pts, rot)  # volume-frame coordinates (x, y, z)
        grid = (2 * (q + d // 2) + 1) / d - 1  # voxel index → grid_sample's [-1, 1], align_corners=False
        n = rot.shape[0]
        sampled = F.grid_sample(vol.expand(n, -1, -1, -1, -1), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        outs.append(sampled[:, 0].sum(dim=1))  # integrate along image-frame z
    return torch.cat(outs) if outs else volume.new_zeros((0, d, d))

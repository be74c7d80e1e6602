"""A map made of rigid bodies, each seen in its own frame in every image: the geometry of a multi-body
reconstruction (as RELION's multi-body refinement, Nakane et al. 2018, eLife 7:e36861, with the bodies'
motions given rather than searched, and no signal subtraction).

Body ``g`` of image ``i`` is turned by ``R_gi`` about its origin ``o_g`` and translated by ``t_gi`` (Å):
a point ``x`` of the base model goes to ``R_gi (x − o_g) + o_g + t_gi``
(:class:`~cryolens.volumes.mixture_decoder.RigidGroupDecoder`'s motion). With the image's pose ``R_i``
(image → volume frame, docs/CONVENTIONS.md) and shift ``s_i`` px, the body's projection is the base body's
projection under ``R_giᵀ R_i`` shifted by ``s_i + [R_iᵀ (o_g + t_gi − R_gi o_g)]_xy / px``
(:func:`body_poses`): so every image contributes to every body's map in that body's frame, and a body is
reconstructed from all the images instead of from the few that share one state.

- :func:`body_poses`: those poses and shifts.
- :func:`body_weights`: a partition of the box between the bodies (a softmax of the distance to each body's
  nearest centre), so that the bodies' maps add up to one map.
- :func:`moved_maps`: the per-image map ``Σ_g (w_g V_g)`` moved by the image's motions (trilinear).
"""

from __future__ import annotations

import torch

from ..imaging.convect import sample_volume, voxel_points


def body_poses(rotations: torch.Tensor, shifts: torch.Tensor | None, body_rotations: torch.Tensor,
               body_translations: torch.Tensor, origin: torch.Tensor, pixel_size: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose ``(N, 3, 3)`` and shift ``(N, 2)`` px ``(x, y)`` under which one body appears in each image.

    rotations ``(N, 3, 3)`` image → volume frame; shifts ``(N, 2)`` px or None (zero); body_rotations
    ``(N, 3, 3)``, body_translations ``(N, 3)`` Å ``(x, y, z)``: the body's motion in each image; origin
    ``(3,)`` Å: the point it turns about (module docstring)."""
    rot = rotations.to(body_rotations.dtype)
    offset = origin + body_translations - torch.einsum("nij,j->ni", body_rotations, origin)  # (N, 3) Å
    extra = torch.einsum("nji,nj->ni", rot, offset)[:, :2] / float(pixel_size)  # R_iᵀ · offset, image x, y
    base = torch.zeros_like(extra) if shifts is None else shifts.to(extra.dtype)
    return torch.einsum("nji,njk->nik", body_rotations, rot), base + extra


def body_weights(centers: torch.Tensor, groups: torch.Tensor, box_size: int, pixel_size: float,
                 softness: float = 2.0, chunk: int = 32768) -> torch.Tensor:
    """``(G, D, D, D)`` ``[z, y, x]`` weights summing to one at every voxel: ``softmax_g(−d_g² / 2s²)``
    with ``d_g`` the distance (Å) from the voxel to the nearest of body ``g``'s ``centers (N, 3)`` Å
    (``(x, y, z)`` from the box centre) and ``s = softness`` Å. groups: ``(N,)`` body of each centre."""
    g_count = int(groups.max()) + 1
    pts = voxel_points(box_size, device=centers.device, dtype=centers.dtype)[0] * float(pixel_size)
    d2 = torch.empty(g_count, pts.shape[0], dtype=centers.dtype, device=centers.device)
    for g in range(g_count):
        c = centers[groups == g]
        for s in range(0, pts.shape[0], chunk):
            d2[g, s:s + chunk] = torch.cdist(pts[s:s + chunk], c).amin(-1).square()
    return torch.softmax(-d2 / (2 * softness**2), 0).reshape(g_count, box_size, box_size, box_size)


def moved_maps(body_maps: torch.Tensor, body_rotations: torch.Tensor, body_translations: torch.Tensor,
               origins: torch.Tensor, pixel_size: float) -> torch.Tensor:
    """``(B, D, D, D)``: ``Σ_g`` body map ``g`` ``(G, D, D, D)`` (already weighted, base frame) moved by
    ``body_rotations (B, G, 3, 3)`` and ``body_translations (B, G, 3)`` Å about ``origins (G, 3)`` Å
    (module docstring), sampled trilinearly at every voxel (zero outside the box)."""
    d = body_maps.shape[-1]
    b = body_rotations.shape[0]
    x = voxel_points(d, b, device=body_maps.device, dtype=body_maps.dtype)  # (B, P, 3) px
    out = body_maps.new_zeros(b, d ** 3)
    px = float(pixel_size)
    for g in range(body_maps.shape[0]):
        o = origins[g].to(body_maps.dtype) / px
        rel = x - o - body_translations[:, g, None].to(body_maps.dtype) / px
        src = torch.einsum("bji,bpj->bpi", body_rotations[:, g].to(body_maps.dtype), rel) + o  # R_gᵀ (x − o − t) + o
        out += sample_volume(body_maps[g], src)
    return out.reshape(b, d, d, d)

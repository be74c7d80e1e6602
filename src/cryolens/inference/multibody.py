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
- :func:`best_motions`: for each image, the best of a set of candidate motions against the body maps (a search, as
  RELION's multi-body refinement searches each body's orientation).
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


def best_motions(particles, bodies: torch.Tensor, rotations: torch.Tensor, translations: torch.Tensor,
                 origins: torch.Tensor, max_freq: float = 0.125, batch_size: int = 128, device=None) -> torch.Tensor:
    """For every image, the candidate motion whose bodies' projections match it best: ``(N,)`` int index.

    bodies: ``(G, D, D, D)`` weighted body maps (base frame). rotations ``(C, G, 3, 3)`` and translations
    ``(C, G, 3)`` Å: the ``C`` candidate motions of the bodies (about ``origins (G, 3)`` Å). Each candidate's
    prediction of image ``i`` is ``Σ_g`` the Fourier slice of body ``g`` under :func:`body_poses` (with the image's
    shift and CTF, :func:`~cryolens.imaging.forward.forward_fourier`); the score is ``Re⟨P, Y⟩ / ‖P‖`` over the
    frequencies below ``max_freq`` cycles/px (a least-squares fit of the image by ``P`` times a free scale, which
    a global scale of the maps does not change). Maps and images are cropped in Fourier space to the smallest even
    box holding those frequencies first (:func:`~cryolens.imaging.spectra.resize_volume`,
    :func:`~cryolens.imaging.spectra.fourier_crop_images`: the same frequencies, far fewer pixels); the CTF of a batch
    is made once and applied to the bodies' summed slices. Images stream from disk in batches of ``batch_size``."""
    from ..imaging.ctf import ctf_2d
    from ..imaging.fft import fft2_centered
    from ..imaging.forward import forward_fourier
    from ..imaging.grids import freq_grid_2d
    from ..imaging.slice import prepare_volume_ft
    from ..imaging.spectra import fourier_crop_images, resize_volume
    from ..io.dataset import iterate_batches

    device = torch.device(device or "cpu")
    d, px = particles.box_size, particles.pixel_size
    small = min(d, 2 * int(max_freq * d) + 4)  # even: the kept frequencies and a margin for interpolation
    fts = [prepare_volume_ft(resize_volume(b.to(device), small)) for b in bodies]
    px_small = px * d / small  # the same frequencies k / (D·px) on the small grid
    keep = freq_grid_2d(small, device=device).norm(dim=-1) <= max_freq * d / small
    best = torch.empty(len(particles), dtype=torch.long)
    for idx, images in iterate_batches(particles, batch_size):
        sel = torch.as_tensor(idx)
        y = fourier_crop_images(fft2_centered(images.to(device)), small)[:, keep]
        rot = particles.rotations[sel].to(device)
        sh = None if particles.shifts is None else particles.shifts[sel].to(device) * (small / d)
        ctf = 1.0 if particles.ctf is None else ctf_2d(particles.ctf[sel].to(device), small, px_small)[:, keep]
        score = torch.empty(len(idx), rotations.shape[0], device=device)
        for c in range(rotations.shape[0]):
            pred = 0
            for g, ft in enumerate(fts):
                r, s = body_poses(rot, sh, rotations[c, g].expand(len(idx), -1, -1),
                                  translations[c, g].expand(len(idx), -1), origins[g], px_small)
                pred = pred + forward_fourier(ft, r, small, s)[:, keep]
            pred = pred * ctf
            score[:, c] = (pred.conj() * y).real.sum(-1) / pred.abs().square().sum(-1).clamp_min(1e-30).sqrt()
        best[sel] = score.argmax(1).cpu()
    return best

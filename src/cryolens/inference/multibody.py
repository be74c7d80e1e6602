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
- :func:`best_motions`: each image's log-likelihood under a set of candidate motions against the body maps (a
  search, as RELION's multi-body refinement searches each body's orientation); :func:`most_probable` picks one
  under the candidates' populations estimated by EM.
- :func:`latent_motions`: the motions and presence a latent row encodes.
- :func:`latent_models`: the atomic models a latent row encodes.
- :func:`best_presence`: for each image, which bodies it shows (compositional heterogeneity: a subunit bound or
  not), the subset of bodies whose projections fit it best — the question focused classification with signal
  subtraction asks of one subunit at a time, asked of every subset at once.
"""

from __future__ import annotations

import math

import numpy as np
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
               origins: torch.Tensor, pixel_size: float, presence: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, D, D, D)``: ``Σ_g`` body map ``g`` ``(G, D, D, D)`` (already weighted, base frame) moved by
    ``body_rotations (B, G, 3, 3)`` and ``body_translations (B, G, 3)`` Å about ``origins (G, 3)`` Å
    (module docstring), sampled trilinearly at every voxel (zero outside the box), each times its
    ``presence (B, G)`` (1 or 0 for a body shown or not; default all 1)."""
    d = body_maps.shape[-1]
    b = body_rotations.shape[0]
    x = voxel_points(d, b, device=body_maps.device, dtype=body_maps.dtype)  # (B, P, 3) px
    out = body_maps.new_zeros(b, d ** 3)
    px = float(pixel_size)
    for g in range(body_maps.shape[0]):
        o = origins[g].to(body_maps.dtype) / px
        rel = x - o - body_translations[:, g, None].to(body_maps.dtype) / px
        src = torch.einsum("bji,bpj->bpi", body_rotations[:, g].to(body_maps.dtype), rel) + o  # R_gᵀ (x − o − t) + o
        moved = sample_volume(body_maps[g], src)
        out += moved if presence is None else presence[:, g, None].to(out.dtype) * moved
    return out.reshape(b, d, d, d)


def _cropped(particles, bodies: torch.Tensor, max_freq: float, device):
    """The bodies' Fourier grids on the smallest even box holding ``max_freq`` cycles/px (and a margin for
    interpolation), that box, its pixel size and the mask of the kept frequencies of its images."""
    from ..imaging.grids import freq_grid_2d
    from ..imaging.slice import prepare_volume_ft
    from ..imaging.spectra import resize_volume

    d, px = particles.box_size, particles.pixel_size
    small = min(d, 2 * int(max_freq * d) + 4)
    fts = [prepare_volume_ft(resize_volume(b.to(device), small)) for b in bodies]
    keep = freq_grid_2d(small, device=device).norm(dim=-1) <= max_freq * d / small
    return fts, small, px * d / small, keep  # the same frequencies k / (D·px) on the small grid


def _cropped_batches(particles, small: int, keep: torch.Tensor, batch_size: int, device):
    """Per batch: indices, the images' kept Fourier values ``(B, K)``, poses, shifts (px of the small box) and
    CTFs ``(B, K)`` (1.0 without CTFs)."""
    from ..imaging.ctf import ctf_2d
    from ..imaging.fft import fft2_centered
    from ..imaging.spectra import fourier_crop_images
    from ..io.dataset import iterate_batches

    d = particles.box_size
    for idx, images in iterate_batches(particles, batch_size):
        sel = torch.as_tensor(idx)
        y = fourier_crop_images(fft2_centered(images.to(device)), small)[:, keep]
        rot = particles.rotations[sel].to(device)
        sh = None if particles.shifts is None else particles.shifts[sel].to(device) * (small / d)
        ctf = 1.0 if particles.ctf is None else \
            ctf_2d(particles.ctf[sel].to(device), small, particles.pixel_size * d / small)[:, keep]
        yield sel, y, rot, sh, ctf


def _loglik(gain: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` float64 Gaussian log-likelihoods of ``C`` predictions of each image (up to a constant) from their
    :func:`fit_gains` ``(B, C)``: ``−(K/2) r / r_min``, ``r = ‖y‖² − gain`` the residual over the ``K`` kept
    coefficients of ``y (B, K)`` (half of them Friedel mates), the noise power per coefficient estimated by the best
    prediction's ``r_min / K``."""
    best = gain.max(1, keepdim=True).values
    r_min = (y.abs().square().sum(-1, keepdim=True).double() - best).clamp_min(1e-30)
    return 0.5 * y.shape[-1] * (gain - best) / r_min


def most_probable(loglik: torch.Tensor) -> torch.Tensor:
    """``(N,)`` each row's most probable of ``C`` candidates under their populations estimated by EM
    (:func:`population_prior`) from the log-likelihoods ``loglik (N, C)``."""
    return (loglik + population_prior(loglik)).argmax(1)


def best_motions(particles, bodies: torch.Tensor, rotations: torch.Tensor, translations: torch.Tensor,
                 origins: torch.Tensor, max_freq: float = 0.125, batch_size: int = 128, device=None,
                 presence: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C)`` float64: each image's log-likelihood (:func:`_loglik`, up to a constant per image) under each of
    ``C`` candidate motions of the bodies (:func:`most_probable` picks one per image).

    bodies: ``(G, D, D, D)`` weighted body maps (base frame). rotations ``(C, G, 3, 3)`` and translations
    ``(C, G, 3)`` Å: the candidate motions (about ``origins (G, 3)`` Å). Each candidate's prediction of image ``i``
    is ``Σ_g`` the Fourier slice of body ``g`` under :func:`body_poses` (with the image's shift and CTF,
    :func:`~cryolens.imaging.forward.forward_fourier`; only the bodies its row of ``presence (N, G)`` 0/1 shows,
    when given) times a free scale ``α ≥ 0`` (a least-squares fit, which a global scale of the maps does not
    change), over the frequencies below ``max_freq`` cycles/px. Maps and images
    are cropped in Fourier space to the smallest even box holding those frequencies first
    (:func:`~cryolens.imaging.spectra.resize_volume`, :func:`~cryolens.imaging.spectra.fourier_crop_images`: the
    same frequencies, far fewer pixels); the CTF of a batch is made once and applied to the bodies' summed slices.
    Images stream from disk in batches of ``batch_size``."""
    from ..imaging.forward import forward_fourier

    device = torch.device(device or "cpu")
    fts, small, px_small, keep = _cropped(particles, bodies, max_freq, device)
    out = torch.empty(len(particles), rotations.shape[0], dtype=torch.float64)
    for sel, y, rot, sh, ctf in _cropped_batches(particles, small, keep, batch_size, device):
        gain = torch.empty(len(sel), rotations.shape[0], device=device, dtype=torch.float64)
        for c in range(rotations.shape[0]):
            pred = 0
            for g, ft in enumerate(fts):
                r, s = body_poses(rot, sh, rotations[c, g].expand(len(sel), -1, -1),
                                  translations[c, g].expand(len(sel), -1), origins[g], px_small)
                f = forward_fourier(ft, r, small, s)[:, keep]
                pred = pred + (f if presence is None else presence[sel, g, None].to(f.device) * f)
            pred = pred * ctf
            num = (pred.conj() * y).real.sum(-1).double().clamp_min(0)
            gain[:, c] = num.square() / pred.abs().square().sum(-1).double().clamp_min(1e-30)
        out[sel] = _loglik(gain, y).cpu()
    return out


def latent_motions(decoder, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each image's body motions and presence from its latent row, laid out as the decoder's ``z``
    (``decoder.zdim`` columns), then optionally a 0/1 column *moves* (0: the bodies stay where the base model has
    them), then optionally one 0/1 presence column per body. Returns ``R (B, G, 3, 3)``, ``t (B, G, 3)`` Å
    (:class:`~cryolens.volumes.mixture_decoder.RigidGroupDecoder.rigid_moves` at ``z``, or none where *moves* is 0)
    and the presence ``(B, G)`` or None."""
    zdim = decoder.zdim
    with torch.no_grad():
        rot, t, _ = decoder.rigid_moves(z[:, :zdim].float())
    if z.shape[1] > zdim:
        still = z[:, zdim] < 0.5
        rot = torch.where(still[:, None, None, None], torch.eye(3, dtype=rot.dtype, device=rot.device), rot)
        t = torch.where(still[:, None, None], torch.zeros_like(t), t)
    return rot, t, (z[:, zdim + 1:].float() if z.shape[1] > zdim + 1 else None)


def all_subsets(g_count: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(2^G − 1, G)`` 0/1: every non-empty subset of ``G`` bodies (row ``k − 1`` is the binary code ``k``)."""
    codes = torch.arange(1, 2 ** g_count, device=device)
    return ((codes[:, None] >> torch.arange(g_count, device=device)) & 1).to(dtype)


def fit_gains(gram: torch.Tensor, overlap: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
    """``(B, S)``: how much the least-squares fit of an image by the sum of a subset's templates times a free scale
    ``α ≥ 0`` lowers its squared norm, ``max(s·b, 0)² / sᵀAs`` (the residual is ``‖y‖²`` minus it). gram:
    ``A (B, G, G)`` the templates' inner products ``Re⟨P_g, P_h⟩``; overlap: ``b (B, G)`` ``Re⟨P_g, y⟩``;
    subsets ``(S, G)`` or ``(B, S, G)`` 0/1."""
    s = subsets.expand(overlap.shape[0], -1, -1) if subsets.dim() == 2 else subsets
    num = (s * overlap[:, None]).sum(-1).clamp_min(0)
    return num.square() / torch.einsum("bsg,bgh,bsh->bs", s, gram, s).clamp_min(1e-30)


def best_subsets(gram: torch.Tensor, overlap: torch.Tensor, exhaustive: int = 12) -> torch.Tensor:
    """``(B, G)`` bool: for each row, the non-empty subset of ``G`` templates with the largest :func:`fit_gains`
    (the best least-squares fit with a free scale). Every subset is tried when ``G ≤ exhaustive``; else backward
    elimination from all ``G`` (drop the template whose removal raises the gain most while one does)."""
    b_count, g_count = overlap.shape
    if g_count <= exhaustive:
        subsets = all_subsets(g_count, gram.dtype, gram.device)
        return subsets[fit_gains(gram, overlap, subsets).argmax(1)].bool()
    s = torch.ones(b_count, g_count, dtype=gram.dtype, device=gram.device)
    eye = torch.eye(g_count, dtype=gram.dtype, device=gram.device)
    for _ in range(g_count - 1):
        now = fit_gains(gram, overlap, s[:, None])[:, 0]
        drop = s[:, None] * (1 - eye)  # (B, G, G): s without template g
        cand = torch.where(s.bool(), fit_gains(gram, overlap, drop), torch.full_like(drop[..., 0], -1.0))
        best, g = cand.max(1)
        better = best > now
        if not bool(better.any()):
            break
        s[better] = drop[better, g[better]]
    return s.bool()


def population_prior(loglik: torch.Tensor, iterations: int = 50) -> torch.Tensor:
    """``(S,)`` log-populations of ``S`` candidates (subsets of bodies, motions) estimated by EM from each image's
    log-likelihoods ``loglik (N, S)``: posteriors under the current populations, populations their mean (RELION's
    class-prior update), from uniform."""
    log_pi = torch.full((loglik.shape[1],), -math.log(loglik.shape[1]), dtype=loglik.dtype, device=loglik.device)
    for _ in range(iterations):
        post = torch.softmax(loglik + log_pi, 1)
        log_pi = post.mean(0).clamp_min(1e-300).log()
    return log_pi


def best_presence(particles, bodies: torch.Tensor, rotations: torch.Tensor, translations: torch.Tensor,
                  origins: torch.Tensor, max_freq: float = 0.125, batch_size: int = 128, device=None,
                  exhaustive: int = 12) -> torch.Tensor:
    """``(N, G)`` bool: which bodies each image shows. bodies: ``(G, D, D, D)`` weighted body maps (base frame);
    rotations ``(N, G, 3, 3)`` and translations ``(N, G, 3)`` Å: each image's own motion of every body about
    ``origins (G, 3)`` Å. Each subset's prediction is its bodies' summed projections times a free scale
    (:func:`fit_gains`, frequencies below ``max_freq`` cycles/px on a Fourier-cropped grid as in
    :func:`best_motions`). With ``G ≤ exhaustive`` every subset is scored by its Gaussian log-likelihood
    (:func:`_loglik`) and each image gets its most probable subset under the subsets' populations estimated by EM
    (:func:`most_probable`); with more bodies, :func:`best_subsets`' backward elimination."""
    from ..imaging.forward import forward_fourier

    device = torch.device(device or "cpu")
    fts, small, px_small, keep = _cropped(particles, bodies, max_freq, device)
    g_count = len(fts)
    subsets = all_subsets(g_count, device=device) if g_count <= exhaustive else None
    loglik = torch.empty(len(particles), 0 if subsets is None else len(subsets), dtype=torch.float64)
    out = torch.empty(len(particles), g_count, dtype=torch.bool)
    for sel, y, rot, sh, ctf in _cropped_batches(particles, small, keep, batch_size, device):
        rg, tg = rotations[sel].to(device), translations[sel].to(device)
        slices = []
        for g, ft in enumerate(fts):
            r, s = body_poses(rot, sh, rg[:, g], tg[:, g], origins[g], px_small)
            slices.append(forward_fourier(ft, r, small, s)[:, keep])
        p = torch.stack(slices, 1) * (ctf[:, None] if torch.is_tensor(ctf) else ctf)  # (B, G, K)
        gram = torch.einsum("bgk,bhk->bgh", p.conj(), p).real.double()
        overlap = torch.einsum("bgk,bk->bg", p.conj(), y).real.double()
        if subsets is None:
            out[sel] = best_subsets(gram, overlap, exhaustive=0).cpu()
            continue
        loglik[sel] = _loglik(fit_gains(gram, overlap, subsets), y).cpu()
    if subsets is not None:
        out = subsets.cpu()[most_probable(loglik)].bool()
    return out


def latent_models(volume, z: torch.Tensor) -> list:
    """The atomic models that latent rows ``z (B, L)`` encode (layout of :func:`latent_motions`): ``volume``'s
    (a :class:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume` built from a model, with a
    :class:`~cryolens.volumes.mixture_decoder.RigidGroupDecoder`) moved model at the decoder's ``z``, or its base
    model where the row's *moves* is 0, each keeping only the atoms of the bodies the row's presence shows."""
    from ..io.atomic import moved_model

    zdim = volume.decoder.zdim
    models = volume.atomic_models(z[:, :zdim].float())
    if z.shape[1] == zdim:
        return models
    row = z.detach().cpu().numpy()
    base = moved_model(volume.atoms, volume.atom_gaussian, np.zeros((volume.n_gaussians, 3)))
    models = [m if row[i, zdim] > 0.5 else base for i, m in enumerate(models)]
    if z.shape[1] == zdim + 1:
        return models
    body = volume.decoder.groups.cpu().numpy()[volume.atom_gaussian]
    return [m.subset(row[i, zdim + 1:][body] > 0.5) for i, m in enumerate(models)]

"""Auto-refine's E-step: adaptive oversampling (RELION's ``--oversampling 1``, generalised), and the
modal alternative — strategies that produce the weighted (image, pose) pairs of
:mod:`~cryolens.inference.estep` pass by pass.

**Full posterior** (:func:`posterior_pairs`): a first pass over all rotations of level ``min(order, 2)``
(global searches, streamed as :class:`~cryolens.inference.estep.StreamingTop`) or over the level-``order``
rotations within the local range of the previous pose, with a Gaussian prior on the angle (σ = the
level's angular step), × shifts of step ``offset_step`` about the previous shift; then passes that replace
each *significant* pose (:func:`~cryolens.inference.estep.significant`, at most ``max_coarse``) by its 8
children on the next grid level, up to ``order + 1``; the last pass also splits each shift into 4 at a
quarter step, as RELION's oversampled translations. Passes before the last use shells up to RELION's
``coarse_size`` (:func:`coarse_shell`). The final pass's weights, normalised over its candidates and
pruned the same way (at most ``max_significant``), are the posterior.
**Modal** (:func:`modal_pairs`, cryoSPARC / cryoDRGN2): the mode only, by
:func:`~cryolens.inference.pose_search.hierarchical_search`, weight 1.
**Symmetry relaxation**: local searches are centred on the previous pose and on each of its mates
``G R`` (``Stage.mates``), with the prior on the angle to the nearest centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..imaging.rotations import geodesic_distance, weighted_mean_rotation
from ..imaging.slice import extract_points_from_sampling_volume, prepare_volume_ft, sampling_volume
from ..imaging.so3_grid import angular_step, children, grid_size, local_grid, so3_grid
from .estep import StreamingTop, WeightedPairs, significant, translation_grid
from .likelihood import half_plane_pixels, log_likelihood_table, prepare_image_terms, volume_slicer
from .memory import rotation_chunk_for
from .pose_accuracy import posterior_rms_angle, window_mass
from .pose_search import frequency_schedule, hierarchical_search


class Reference:
    """One half's map prepared for the E-step: its sampling volume, and slice values on the half-plane
    pixels of the likelihood (:func:`~cryolens.inference.likelihood.half_plane_pixels`) for a shell
    limit ``k``."""

    def __init__(self, volume: torch.Tensor, pad: int, k_max: int, n_images: int = 0):
        self.size = volume.shape[-1]
        self.n_images = n_images
        ft = prepare_volume_ft(volume, pad)
        self.sv = sampling_volume(ft)
        self.slicer = volume_slicer(ft, self.size)
        self.k_max = k_max
        self.dtype = volume.dtype
        self._pixels: dict[int, torch.Tensor] = {}
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def pixels(self, k: int) -> torch.Tensor:
        """``(N_h,)`` flat indices of the half-plane pixels with shell ≤ ``k`` (cached)."""
        if k not in self._pixels:
            self._pixels[k] = half_plane_pixels(self.size, k, self.sv.device)[0]
        return self._pixels[k]

    def values(self, rotations: torch.Tensor, k: int | None = None, chunk: int = 4096) -> torch.Tensor:
        """``(M, N_h)`` slice values of ``rotations (M, 3, 3)`` on the half-plane pixels of shells ≤ ``k``
        (default ``k_max``)."""
        px = self.pixels(self.k_max if k is None else k)
        if rotations.shape[0] == 0:
            return torch.zeros(0, px.numel(), dtype=torch.complex64 if self.sv.dtype == torch.float32
                               else torch.complex128, device=self.sv.device)
        return torch.cat([extract_points_from_sampling_volume(self.sv, rotations[s:s + chunk], self.size, px)
                          for s in range(0, rotations.shape[0], chunk)])

    def level_values(self, level: int, k: int | None = None) -> torch.Tensor:
        """All rotations of ``so3_grid(level)`` (cached): ``(M, N_h)``."""
        k = self.k_max if k is None else k
        if (level, k) not in self._cache:
            self._cache[(level, k)] = self.values(so3_grid(level, device=self.sv.device, dtype=self.sv.dtype), k)
        return self._cache[(level, k)]

    def grid_values(self, level: int, indices: torch.Tensor, k: int | None = None,
                    cache_bytes: float = 6e8) -> torch.Tensor:
        """``(len(indices), N_h)`` values of grid points ``indices`` of ``level``: from the whole level,
        rendered once and cached, when it fits in ``cache_bytes`` (levels ≤ 3 at D = 64: 36,864
        rotations) and is smaller than 64 renders per image of the half-set (a broad posterior asks for
        up to ``8 · max_coarse`` per image); otherwise rendered for these rotations only."""
        k = self.k_max if k is None else k
        m = grid_size(level)
        if m * self.pixels(k).numel() * 8 <= cache_bytes and m <= 64 * self.n_images:
            return self.level_values(level, k)[indices]
        return self.values(so3_grid(level, device=self.sv.device, dtype=self.sv.dtype, indices=indices), k)


def coarse_shell(step_deg: float, size: int, pixel_size: float, diameter: float, k_max: int) -> int:
    """RELION's ``coarse_size`` as a shell limit: the highest shell at which an angular step of
    ``step_deg`` moves the particle's edge (``diameter`` Å) by at most ~1/1.2 of the resolution,
    ``k = D·px / (1.2 · π · diameter · step/360)``, at most ``k_max`` (at least 4)."""
    rotated = math.pi * diameter * step_deg / 360.0  # Å moved at the particle's edge
    return int(max(4, min(k_max, math.floor(size * pixel_size / (1.2 * rotated)))))


@dataclass
class Stage:
    """What one iteration searches: grid level, frequency limit, shifts, global or local."""

    order: int
    k_max: int
    offset_range: float
    offset_step: float
    local: bool
    local_range_rad: float  # search radius of local searches
    size: int = 0
    pixel_size: float = 1.0
    diameter: float = 0.0  # Å; 0: no coarse passes at lower frequency
    mates: torch.Tensor | None = None  # (S, 3, 3) symmetry relaxation: local searches also about G R
    caps: tuple[int, int] = (16, 48)  # significant-set caps of the coarse passes and the last pass

    def k_at(self, level: int, last: bool) -> int:
        """Shell limit of a pass at grid ``level``: ``k_max`` for the last pass, RELION's coarse size
        for the step of ``level`` otherwise."""
        if last or self.diameter <= 0:
            return self.k_max
        return coarse_shell(angular_step(level), self.size, self.pixel_size, self.diameter, self.k_max)


def _global_pass(terms, ref: Reference, level: int, k: int, b: int, t: int, cap: int):
    """All rotations of ``level`` × the shifts, streamed: ``(top log weights (B, S), rotation index,
    shift index, log-evidence (B,))``, best first."""
    vals = ref.level_values(level, k)
    m = vals.shape[0]
    cpu_chunk = max(1, (1 << 22) // max(1, b * t))  # the fixed chunk: the CPU's cap
    chunk = rotation_chunk_for(vals.device, ref.size, b, t, cpu_chunk, vals.real.element_size())
    top = StreamingTop(b, cap, 2, 1, vals.device, terms.ctf2w.dtype)
    for a in range(0, m, chunk):
        z = min(m, a + chunk)
        ll = log_likelihood_table(terms, vals[a:z], on_pixels=True).reshape(b, -1)  # (B, T·Mc), t-major
        top.add(ll, lambda i, a=a, mc=z - a: (a + i % mc, torch.div(i, mc, rounding_mode="floor")))
    top_v, (rot_idx, t_idx) = top.sorted()
    return top_v, rot_idx, t_idx, top.lse[:, 0]


def _local_candidates(prev_rot: torch.Tensor, stage: Stage, level: int, b: int):
    """The grid points of ``level`` within ``stage.local_range_rad`` of each image's previous pose (and
    of its mates): ``(centres (C, B, 3, 3), candidates (B, K) grid index, valid (B, K))``."""
    dev, rdt = prev_rot.device, prev_rot.dtype
    centres = prev_rot[None]  # (C, B, 3, 3): the previous pose and its mates
    if stage.mates is not None:
        centres = torch.cat([centres, stage.mates.to(dev, rdt)[:, None] @ centres])
    bat, idx = local_grid(centres.reshape(-1, 3, 3), level, stage.local_range_rad)
    if stage.mates is not None:  # back to images; neighbourhoods of two centres may overlap
        key = torch.unique((bat % b) * grid_size(level) + idx)
        bat, idx = torch.div(key, grid_size(level), rounding_mode="floor"), key % grid_size(level)
    counts = torch.bincount(bat, minlength=b)
    kmax = max(1, int(counts.max()))
    pos = torch.arange(bat.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    cand = torch.zeros(b, kmax, dtype=torch.long, device=dev)
    valid = torch.zeros(b, kmax, dtype=torch.bool, device=dev)
    cand[bat, pos], valid[bat, pos] = idx, True
    return centres, cand, valid


def window_diagnostic(y, c, s2, ref: Reference, stage: Stage, prev_rot, prev_shift, widen: float = 2.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``(B,)``: the fraction of the likelihood's posterior (uniform prior, shifts marginalised,
    shells ``≤ k_max``) over the level-``order`` grid points within ``widen ×`` the local search radius that
    lies within the radius (:func:`~cryolens.inference.pose_accuracy.window_mass`), and that posterior's
    RMS angle about its mode, degrees. Symmetry mates are not visited (the window about the previous pose)."""
    from dataclasses import replace

    b, rdt = y.shape[0], y.real.dtype
    wide = replace(stage, local_range_rad=widen * stage.local_range_rad, mates=None)
    _, cand, valid = _local_candidates(prev_rot.to(rdt), wide, stage.order, b)
    rots = so3_grid(stage.order, device=cand.device, dtype=rdt, indices=cand.reshape(-1)).reshape(b, -1, 3, 3)
    shifts = prev_shift[:, None, :] + translation_grid(stage.offset_range, stage.offset_step, circular=True,
                                                       device=y.device, dtype=rdt)
    terms = prepare_image_terms(y, s2, shifts, c, stage.k_max, half_plane=True)
    vals = ref.values(rots.reshape(-1, 3, 3), stage.k_max).reshape(b, cand.shape[1], -1)
    ll = torch.logsumexp(log_likelihood_table(terms, vals, on_pixels=True), 1)  # (B, K): shifts marginalised
    ll = torch.where(valid, ll, torch.full_like(ll, -math.inf))
    ang = geodesic_distance(prev_rot.to(rdt)[:, None], rots)
    return (window_mass(ll, ang, stage.local_range_rad),
            torch.rad2deg(posterior_rms_angle(ll, rots)))


def _local_pass(terms, ref: Reference, stage: Stage, prev_rot, level: int, k: int, b: int, cfg):
    """Local search about the previous poses with a Gaussian prior on the angle (σ = the level's step; with
    ``cfg.flat_local_prior`` none: the window restricts the search and adds no information):
    ``(top log posterior (B, S), rotation index, shift index, log-evidence (B,), log prior (B, S))``."""
    rdt = terms.ctf2w.dtype
    centres, cand, valid = _local_candidates(prev_rot.to(rdt), stage, level, b)
    kmax = cand.shape[1]
    rots = so3_grid(level, device=cand.device, dtype=rdt, indices=cand.reshape(-1)).reshape(b, kmax, 3, 3)
    vals = ref.values(rots.reshape(-1, 3, 3), k).reshape(b, kmax, -1)
    ll = log_likelihood_table(terms, vals, on_pixels=True)  # (B, T, K)
    sigma = stage.local_range_rad / cfg.local_range_steps
    ang = torch.stack([geodesic_distance(cen[:, None], rots) for cen in centres]).min(0).values  # (B, K)
    inside = torch.zeros_like(ang) if getattr(cfg, "flat_local_prior", False) else -0.5 * (ang / sigma) ** 2
    lp = torch.where(valid, inside, torch.full_like(ang, -math.inf))
    ll = (ll + lp[:, None, :]).reshape(b, -1)
    top_v, i = ll.topk(min(cfg.max_coarse, ll.shape[1]), 1)
    t_idx, k_idx = torch.div(i, kmax, rounding_mode="floor"), i % kmax
    return top_v, cand.gather(1, k_idx), t_idx, torch.logsumexp(ll, 1), lp.gather(1, k_idx)


def _first_pass(y, c, s2, ref: Reference, stage: Stage, prev_rot, prev_shift, cfg):
    """Coarse pass: ``(rotation index (B, K) at level L, shift (B, K, 2), log weight (B, K),
    log prior (B, K), L)`` of the significant coarse poses, best first."""
    b = y.shape[0]
    dev, rdt = y.device, y.real.dtype
    shifts = prev_shift[:, None, :] + translation_grid(stage.offset_range, stage.offset_step, circular=True,
                                                       device=dev, dtype=rdt)  # (B, T, 2)
    level = min(stage.order, 2) if not stage.local else stage.order
    k = stage.k_at(level, last=False)
    terms = prepare_image_terms(y, s2, shifts, c, k, half_plane=True)
    if not stage.local:
        top_v, rot_idx, t_idx, lse = _global_pass(terms, ref, level, k, b, shifts.shape[1], cfg.max_coarse)
        prior = torch.zeros_like(top_v)
    else:
        top_v, rot_idx, t_idx, lse, prior = _local_pass(terms, ref, stage, prev_rot, level, k, b, cfg)
    w, keep = significant(top_v, lse, cfg.mass, cfg.max_coarse)
    shift = shifts.gather(1, t_idx[..., None].expand(-1, -1, 2))
    logw = torch.where(keep, top_v, torch.full_like(top_v, -math.inf))
    return rot_idx, shift, logw, prior, level


def _child_pass(y, c, s2, ref: Reference, stage: Stage, level, rot_idx, shift, logw, prior, prev_rot,
                sub_shift: float | None, k: int):
    """Children (level + 1) of each kept pose (``logw`` finite) × shift offsets (none, or 4 at
    ``±sub_shift``): ``(child index (B, K'), shift (B, K', 2), log posterior (B, K') unnormalised,
    prior (B, K'))`` over all candidates (−inf where not a candidate)."""
    b = rot_idx.shape[0]
    dev, rdt = y.device, y.real.dtype
    kept = torch.isfinite(logw)
    kk = max(1, int(kept.sum(1).max()))
    rot_idx, shift, prior, kept = rot_idx[:, :kk], shift[:, :kk], prior[:, :kk], kept[:, :kk]
    child = children(level, rot_idx.clamp_min(0))  # (B, K, 8)
    if sub_shift is None:
        offs = torch.zeros(1, 2, device=dev, dtype=rdt)
    else:
        h = sub_shift
        offs = torch.tensor([[-h, -h], [h, -h], [-h, h], [h, h]], device=dev, dtype=rdt)
    n_s = offs.shape[0]
    cand_shift = shift[:, :, None, :] + offs  # (B, K, S, 2)
    # only the kept poses are scored (one pseudo-image each), then laid back into (B, K, 8, S)
    bi, ki = kept.nonzero(as_tuple=True)
    terms = prepare_image_terms(y[bi], s2, cand_shift[bi, ki], None if c is None else c[bi], k, half_plane=True)
    vals = ref.grid_values(level + 1, child[bi, ki].reshape(-1), k).reshape(bi.numel(), 8, -1)
    scored = log_likelihood_table(terms, vals, on_pixels=True).transpose(1, 2)  # (P, 8, S)
    pr = prior[:, :, None, None].expand(-1, -1, 8, n_s)
    ll = torch.full((b, kk, 8, n_s), -math.inf, device=dev, dtype=scored.dtype)
    ll[bi, ki] = scored + pr[bi, ki]
    idx = child[:, :, :, None].expand(-1, -1, -1, n_s)
    sh = cand_shift[:, :, None, :, :].expand(-1, -1, 8, -1, -1)
    return idx.reshape(b, -1), sh.reshape(b, -1, 2), ll.reshape(b, -1), pr.reshape(b, -1)


def posterior_mean_pose(poses: WeightedPairs, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, 3)`` chordal mean rotation and ``(B, 2)`` mean shift of each image's weighted pairs."""
    rdt = poses.map_rotation.dtype
    rots = so3_grid(poses.level, device=poses.weight.device, dtype=torch.float64, indices=poses.grid_index)
    w = poses.weight.double()
    total = torch.zeros(b, dtype=torch.float64, device=w.device).index_add_(0, poses.image, w)
    mean_r = weighted_mean_rotation(rots, w, poses.image, b)
    mean_t = torch.zeros(b, 2, dtype=torch.float64, device=w.device).index_add_(
        0, poses.image, w[:, None] * poses.shift.double()) / total.clamp_min(1e-300)[:, None]
    return mean_r.to(rdt), mean_t.to(poses.map_shift.dtype)


def posterior_pairs(y, c, s2, ref: Reference, stage: Stage, prev_rot, prev_shift, cfg) -> WeightedPairs:
    """Full-posterior E-step of one batch by adaptive oversampling (module docstring)."""
    rot_idx, shift, logw, prior, level = _first_pass(y, c, s2, ref, stage, prev_rot, prev_shift, cfg)
    target = stage.order + 1
    w = keep = None
    while level < target:
        last = level + 1 == target
        idx, sh, ll, pr = _child_pass(y, c, s2, ref, stage, level, rot_idx, shift, logw, prior, prev_rot,
                                      stage.offset_step / 4 if last else None, stage.k_at(level + 1, last))
        level += 1
        cap = cfg.max_significant if last else cfg.max_coarse
        v, order = ll.sort(1, descending=True)
        lse = torch.logsumexp(ll, 1)
        w, keep = significant(v, lse, cfg.mass, cap)
        order = order[:, :w.shape[1]]
        rot_idx, prior = idx.gather(1, order), pr.gather(1, order)
        shift = sh.gather(1, order[..., None].expand(-1, -1, 2))
        logw = torch.where(keep, v[:, :w.shape[1]], torch.full_like(w, -math.inf))
    kept = w.sum(1)
    w = w / kept[:, None]
    bi, ki = keep.nonzero(as_tuple=True)
    return WeightedPairs(image=bi, grid_index=rot_idx[bi, ki], level=level, shift=shift[bi, ki], weight=w[bi, ki],
                       map_rotation=so3_grid(level, device=y.device, dtype=y.real.dtype, indices=rot_idx[:, 0]),
                       map_shift=shift[:, 0], max_weight=w[:, 0], n_significant=keep.sum(1), kept_mass=kept)


def modal_pairs(y, c, s2, ref: Reference, stage: Stage, cfg) -> WeightedPairs:
    """Modal E-step of one batch: :func:`hierarchical_search` from level ``min(2, order)`` to
    ``order + 1`` with frequency marching up to ``k_max``; one pair of weight 1 per image."""
    base = min(2, stage.order)
    n_levels = stage.order + 1 - base
    ks = frequency_schedule(ref.size, n_levels, k_end=stage.k_max)
    res = hierarchical_search(y, ref.slicer, sigma2=s2, ctf=c, base_level=base, n_levels=n_levels,
                              max_shift=cfg.offset_range, shift_step=cfg.offset_step, keep=cfg.keep, k_max=ks,
                              image_chunk=cfg.batch_size)
    b = y.shape[0]
    ones = torch.ones(b, device=y.device, dtype=y.real.dtype)
    return WeightedPairs(image=torch.arange(b, device=y.device), grid_index=res.grid_index.to(y.device),
                       level=res.level, shift=res.shifts.to(y.device), weight=ones,
                       map_rotation=res.rotations.to(y.device), map_shift=res.shifts.to(y.device), max_weight=ones,
                       n_significant=torch.ones(b, dtype=torch.long, device=y.device))

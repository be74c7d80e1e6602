"""Gold-standard auto-refinement (RELION's Refine3D): full-posterior EM or modal EM over a pose grid.

Each half-set ``h ∈ {1, 2}`` (``rlnRandomSubset``, or a seeded equal split) has its own map ``V_h``,
noise spectrum ``σ²_h(k)`` and poses; nothing of one half ever enters the other until the final map.
One iteration, per half:

**E-step** (``pose_inference="posterior"``, RELION): for every image the posterior over
``(R, t)`` on the SO(3) grid of :mod:`cryolens.imaging.so3_grid` × a translation grid centred on the
image's previous shift, with the Gaussian likelihood of :mod:`cryolens.inference.likelihood`
restricted to shells ``≤ k_max = shell(current resolution) + incr_size`` (RELION's ``--incr_size``),
by *adaptive oversampling* (RELION's ``--oversampling 1``, generalised): a first pass over all
rotations of level ``min(order, 2)`` (global searches) or over the level-``order`` rotations within
``local_range`` of the previous pose with a Gaussian prior on the angle (local searches, from
``local_order`` on, RELION's ``--auto_local_healpix_order``) × shifts of step ``offset_step``; then
passes that replace each *significant* pose (the smallest set of largest weights holding ``mass`` of the
posterior, at most ``max_coarse`` poses) by its 8 children on the next grid level, up to level
``order + 1``; the last pass also splits each shift into 4 at a quarter step, as RELION's
oversampled translations. The final pass's weights, normalised over its candidates and pruned the same
way (at most ``max_significant``), are the posterior.
With ``pose_inference="modal"`` (cryoSPARC homogeneous refinement / cryoDRGN2) each image gets only the
mode, from :func:`~cryolens.inference.pose_search.hierarchical_search` (base level 2, keep the best
candidates, split in SO(3) and translation with frequency marching up to ``k_max``), weight 1.

**M-step**: the kept (image, pose) pairs are inserted with their weights, shift undone
(``Σ w C Y'``, ``Σ w C²``, :class:`~cryolens.inference.reconstruct.FourierAccumulator`); the map is
the MAP estimate under the per-shell Gaussian prior ``τ²(k)`` (:func:`tau2_from_fsc`,
RELION's ``τ² = T · SSNR · σ²_rec``) read off the gold-standard FSC of this iteration's two
*unfiltered* (weakly regularised) half reconstructions. That FSC is the one reported and the one the
schedule follows, and the unfiltered halves are the half maps written (RELION's ``_unfil`` maps,
which ``relion_postprocess`` reads). The MAP halves serve only as the next references: filtering both
halves with a prior read off one shared FSC shrinks the shells beyond the resolution by up to 10⁴,
and there the little power that the real-space crop, gridding correction and mask leak from their
shared low-resolution content dominates and correlates them (measured at SNR 0.01, D 32: FSC 0.3 at
every shell beyond 18 Å between the MAP halves, 0.0 between the unfiltered ones and between
``relion_reconstruct``'s halves from the same poses). ``σ²_h(k)`` is re-estimated as the mean ``|Y' − C P|²``
of the images at their MAP pose under the E-step reference (RELION uses the posterior-weighted mean;
they agree once the posteriors are sharp).

**Symmetry relaxation** (``relax_symmetry = "Cn"``, RELION 4's ``--relax_sym``): for a pseudo-symmetric
particle the local searches are centred on the previous pose *and* on each of its mates ``G R`` under
the group (:mod:`cryolens.imaging.symmetry`), with the Gaussian prior on the angle to the nearest centre,
so that an image whose previous pose sat on the wrong mate can move to the right one when the map tells
them apart. The group's axis is found on the initial map (:func:`~cryolens.imaging.symmetry.symmetry_axis`:
the map should be centred); no map is ever symmetrized. Global searches see every mate anyway.

**Schedule** (RELION's auto-refine, simplified): the resolution (half-map FSC = 0.143) sets ``k_max``
of the next E-step. When an iteration gains less than ``min_gain_shells`` of resolution and the median
pose change is below ``2 ×`` the finest angular step, the search is *stalled*: the grid level ``order``
goes up by one (angular step halves), the shift step halves and the shift range narrows
(``max(offset_range / 2^s, 3 · step)`` after ``s`` refinements). A stall at ``max_order`` ends the
run (converged), as does ``max_iterations``. The final map joins both halves' sums with the full-set
prior (``FSC_full = 2 FSC / (1 + FSC)``).

Every iteration writes (when a run folder is given) ``iterNNN_half1.mrc``, ``iterNNN_half2.mrc``,
``iterNNN_fsc.json`` and ``iterNNN_particles.star`` (poses, ``rlnRandomSubset``) and the checkpoint
``checkpoint.pt`` (:mod:`cryolens.io.checkpoint`); ``resume=True`` continues from it and ends with the
same result as an uninterrupted run (each iteration is a deterministic function of the checkpointed
state).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered
from ..imaging.grids import flatten_solvent, freq_grid_2d, lowpass_volume, shell_index_2d, shell_sum
from ..imaging.rotations import geodesic_distance, weighted_mean_rotation
from ..imaging.shift import phase_shift
from ..imaging.slice import prepare_volume_ft, sampling_volume
from ..imaging.so3_grid import angular_step, children, grid_size, local_grid, so3_grid
from ..imaging.symmetry import cyclic_operators, cyclic_order, symmetry_axis
from ..io.dataset import iterate_batches
from ..io.particles import Particles, half_set_labels
from ..metrics.fsc import fsc as fsc_curve
from ..metrics.fsc import resolution_at
from .likelihood import half_plane_pixels, log_likelihood_table, prepare_image_terms, used_pixels, volume_slicer
from .pose_search import frequency_schedule, hierarchical_search
from .posterior import translation_grid
from .reconstruct import FourierAccumulator

CHECKPOINT = "checkpoint.pt"


@dataclass
class RefineConfig:
    """Options of :func:`auto_refine` (module docstring). Angles in degrees, shifts in px, lengths in Å.

    pose_inference: ``"posterior"`` (RELION, full posterior) or ``"modal"`` (cryoSPARC / cryoDRGN2).
    healpix_order: first grid level of the search (RELION ``--healpix_order``; 2 = 15° coarse, 7.5°
    after oversampling: the GUI's "7.5°"). local_order: from this level on, local searches
    (RELION ``--auto_local_healpix_order``, default 4). max_order: finest level (the final oversampled
    step is ``angular_step(max_order + 1)``). local_range: search radius of local searches in
    units of the level's angular step (Gaussian prior σ = step; RELION's is 2 steps, searching ±3σ). offset_range, offset_step: shift grid
    (RELION ``--offset_range``, ``--offset_step``: the command-line step, i.e. twice the GUI's).
    initial_lowpass: low-pass (Å) applied to the initial map (RELION ``--ini_high``; ``None``: none).
    incr_size: shells above the current resolution used by the E-step. tau2_fudge: ``T``.
    mass, max_coarse, max_significant: significant sets (``--adaptive_fraction``).
    max_iterations: cap. min_gain_shells: resolution gain (in shells) below which an iteration stalls.
    pad: oversampling of the projector and the accumulator. batch_size: images per E-step batch.
    keep: modal search, candidates kept per level. particle_diameter: Å (RELION's
    ``--particle_diameter``; default 0.8 × the box), sets the shell limit of the coarse passes
    (:func:`coarse_shell`, RELION's ``coarse_size``) when ``coarse_size``. seed: half-set split when
    the data has none. pose_estimate: the pose written per image (and centring the next local search):
    ``"map"``, the grid point of largest posterior weight (RELION's ``rlnAngleRot…``), or ``"mean"``, the
    posterior mean over the significant points (chordal mean of the rotations,
    :func:`~cryolens.imaging.rotations.weighted_mean_rotation`, and mean shift): off the grid, and
    closer to the truth where the posterior spans several grid steps. flatten_solvent: the E-step
    references are the MAP halves with the solvent outside a sphere of ``particle_diameter`` flattened
    to its mean through a ``mask_edge``-px cosine edge (RELION's ``--flatten_solvent``,
    ``--width_mask_edge``; the noise of the empty box no longer enters the likelihood). The reported
    FSC and the half maps written are unmasked. relax_symmetry: ``"C1"`` (none) or a cyclic group
    ``"Cn"`` whose mates the local searches also visit (module docstring; RELION 4 ``--relax_sym``).
    """

    pose_inference: str = "posterior"
    healpix_order: int = 2
    local_order: int = 4
    max_order: int = 5
    local_range: float = 2.5
    offset_range: float = 5.0
    offset_step: float = 2.0
    initial_lowpass: float | None = 60.0
    incr_size: int = 10
    tau2_fudge: float = 1.0
    mass: float = 0.999
    max_coarse: int = 16
    max_significant: int = 48
    max_iterations: int = 30
    min_gain_shells: float = 0.5
    pad: int = 2
    batch_size: int = 64
    keep: int = 8
    particle_diameter: float | None = None
    coarse_size: bool = True
    seed: int = 0
    pose_estimate: str = "map"
    flatten_solvent: bool = True
    mask_edge: float = 5.0
    relax_symmetry: str = "C1"

    def __post_init__(self):
        if self.pose_estimate not in ("map", "mean"):
            raise ValueError(f"pose_estimate must be 'map' or 'mean', got {self.pose_estimate!r}")
        if self.pose_inference not in ("posterior", "modal"):
            raise ValueError(f"pose_inference must be 'posterior' or 'modal', got {self.pose_inference!r}")
        cyclic_order(self.relax_symmetry)  # a clear error for anything but Cn
        if not 0 <= self.healpix_order <= self.max_order:
            raise ValueError(f"need 0 <= healpix_order <= max_order, got {self.healpix_order}, {self.max_order}")

    @classmethod
    def from_dict(cls, d: dict) -> RefineConfig:
        """From a dict, ignoring keys that are not options."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class RefineResult:
    """Outcome of :func:`auto_refine` for ``N`` images of box ``D``.

    volume: ``(D, D, D)`` float32 final map from both halves; half_maps: the two unfiltered half maps
    (RELION's ``_unfil``). fsc: ``(D//2+1,)`` their gold-standard FSC; resolution: its 0.143 crossing (Å).
    rotations: ``(N, 3, 3)`` MAP rotations (image → volume frame); shifts: ``(N, 2)`` px (particle centre
    relative to the image centre). half: ``(N,)`` int 0/1 half-set. history: one dict per iteration.
    converged: whether the schedule converged (else ``max_iterations`` ended it). relax_axis: the
    pseudo-symmetry axis ``(3,)`` ``(x, y, z)`` found on the initial map when ``relax_symmetry`` is ``Cn``.
    """

    volume: torch.Tensor
    half_maps: tuple[torch.Tensor, torch.Tensor]
    fsc: np.ndarray
    resolution: float
    rotations: torch.Tensor
    shifts: torch.Tensor
    half: np.ndarray
    history: list[dict]
    pixel_size: float
    converged: bool
    sigma2: tuple[torch.Tensor, torch.Tensor] = field(default=None)
    relax_axis: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# pure helpers


def tau2_from_fsc(fsc: np.ndarray | torch.Tensor, sigma2: torch.Tensor, shell_weight: torch.Tensor,
                  fudge: float = 1.0, floor: float = 1e-3) -> torch.Tensor:
    """RELION's prior power ``τ²(k) = T · SSNR(k) · σ²_rec(k)``, ``(D//2+1,)`` float64.

    ``SSNR = FSC / (1 − FSC)`` (FSC clipped to ``[floor, 1 − floor]``); ``σ²_rec(k) = 1 / W(k)`` with
    ``W(k)`` the shell mean of the noise-whitened weights ``Σ w C² / σ²``; here ``shell_weight`` is the
    shell mean of the *unwhitened* ``Σ w C²`` (:meth:`FourierAccumulator.shell_weight`) and ``σ²``
    the per-shell noise power, so ``σ²_rec = σ² / shell_weight``. T = ``fudge``. A shell without data
    (``shell_weight = 0``) gets ``τ² = 0``: the prior holds it at zero.
    """
    f = torch.as_tensor(np.asarray(fsc, dtype=np.float64)).clip(floor, 1 - floor)
    sw = shell_weight.double().cpu()
    s2 = sigma2.double().cpu()
    ssnr = f / (1 - f)
    return torch.where(sw > 0, fudge * ssnr * s2 / sw.clamp_min(1e-300), torch.zeros_like(sw))


def map_regularisation(tau2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``λ(k) = σ²(k) / τ²(k)`` (float64; ``inf`` where ``τ² = 0``): the MAP map is
    ``Σ w C Y' / (Σ w C² + λ)``, i.e. RELION's ``(Σ w C Y / σ²) / (Σ w C² / σ² + 1 / τ²)``
    multiplied through by ``σ²``."""
    t2 = tau2.double()
    s2 = sigma2.double().to(t2.device)
    return torch.where(t2 > 0, s2 / t2.clamp_min(1e-300), torch.full_like(t2, math.inf))


def _pixel_values(sv: torch.Tensor, rotations: torch.Tensor, freqs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Central-slice values ``(M, P)`` complex at 2D frequencies ``freqs (P, 2)`` (cycles/px, (x, y))
    of the sampling volume ``sv`` (:func:`~cryolens.imaging.slice.sampling_volume`) — the same
    trilinear samples as :func:`~cryolens.imaging.slice.extract_from_sampling_volume`, only at the
    pixels the likelihood uses. inside: ``(P,)`` frequencies within Nyquist (others are 0)."""
    padded = sv.shape[-1] - 1
    f3 = torch.cat([freqs, torch.zeros_like(freqs[:, :1])], -1).to(sv.dtype)  # (P, 3)
    pts = torch.einsum("pj,mij->mpi", f3, rotations.to(sv.dtype)) * padded + padded // 2
    grid = ((2.0 / padded) * pts - 1)[None, :, :, None, :]  # (1, M, P, 1, 3)
    out = F.grid_sample(sv, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, :, :, :, 0]
    out = out * inside.to(out.dtype)
    return torch.complex(out[0], out[1])


class _Reference:
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
        self._pixels: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def pixels(self, k: int) -> torch.Tensor:
        """``(N_h,)`` flat indices of the half-plane pixels with shell ≤ ``k``."""
        return self._pixel_set(k)[0]

    def _pixel_set(self, k: int):
        if k not in self._pixels:
            px, _ = half_plane_pixels(self.size, k, self.sv.device)
            f = freq_grid_2d(self.size, device=self.sv.device, dtype=self.dtype).reshape(-1, 2)[px]
            self._pixels[k] = (px, f, f.norm(dim=-1) <= 0.5)
        return self._pixels[k]

    def values(self, rotations: torch.Tensor, k: int | None = None, chunk: int = 4096) -> torch.Tensor:
        """``(M, N_h)`` slice values of ``rotations (M, 3, 3)`` on the half-plane pixels of shells ≤ ``k``
        (default ``k_max``)."""
        px, freqs, inside = self._pixel_set(self.k_max if k is None else k)
        if rotations.shape[0] == 0:
            return torch.zeros(0, px.numel(), dtype=torch.complex64 if self.sv.dtype == torch.float32
                               else torch.complex128, device=self.sv.device)
        return torch.cat([_pixel_values(self.sv, rotations[s:s + chunk], freqs, inside)
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
class _Stage:
    """What one iteration searches: grid level, frequency limit, shifts, global or local."""

    order: int
    k_max: int
    offset_range: float
    offset_step: float
    local: bool
    local_range: float  # radians
    size: int = 0
    pixel_size: float = 1.0
    diameter: float = 0.0  # Å; 0: no coarse passes at lower frequency
    mates: torch.Tensor | None = None  # (S, 3, 3) symmetry relaxation: local searches also about G R

    def k_at(self, level: int, last: bool) -> int:
        """Shell limit of a pass at grid ``level``: ``k_max`` for the last pass, RELION's coarse size
        for the step of ``level`` otherwise."""
        if last or self.diameter <= 0:
            return self.k_max
        return coarse_shell(angular_step(level), self.size, self.pixel_size, self.diameter, self.k_max)


def _significant(v: torch.Tensor, lse: torch.Tensor, mass: float, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From log-weights ``v (B, K)`` sorted descending and their normaliser ``lse (B,)``: the weights
    ``(B, K')`` (0 past the significant set) and the keep mask, ``K' = min(K, cap)``."""
    v = v[:, :cap]
    w = torch.exp(v - lse[:, None])
    cum = torch.cumsum(w, 1)
    count = ((cum < mass).sum(1) + 1).clamp(max=v.shape[1])
    keep = (torch.arange(v.shape[1], device=v.device)[None] < count[:, None]) & torch.isfinite(v)
    return torch.where(keep, w, torch.zeros_like(w)), keep


def _first_pass(y, c, s2, ref: _Reference, stage: _Stage, prev_rot, prev_shift, cfg: RefineConfig):
    """Coarse pass: ``(rotation index (B, K) at level L, shift (B, K, 2), log weight (B, K),
    log prior (B, K), L)`` of the significant coarse poses, best first."""
    b = y.shape[0]
    dev, rdt = y.device, y.real.dtype
    shifts = prev_shift[:, None, :] + translation_grid(stage.offset_range, stage.offset_step, circular=True,
                                                       device=dev, dtype=rdt)  # (B, T, 2)
    t = shifts.shape[1]
    level = min(stage.order, 2) if not stage.local else stage.order
    k = stage.k_at(level, last=False)
    terms = prepare_image_terms(y, s2, shifts, c, k, half_plane=True)
    if not stage.local:
        vals = ref.level_values(level, k)
        m = vals.shape[0]
        chunk = max(1, (1 << 22) // max(1, b * t))
        lse = torch.full((b,), -math.inf, device=dev, dtype=rdt)
        top_v = torch.empty(b, 0, device=dev, dtype=rdt)
        top_i = torch.empty(b, 0, device=dev, dtype=torch.long)
        for a in range(0, m, chunk):
            z = min(m, a + chunk)
            ll = log_likelihood_table(terms, vals[a:z], on_pixels=True).reshape(b, -1)  # (B, T·Mc), t-major
            lse = torch.logaddexp(lse, torch.logsumexp(ll, 1))
            v, i = ll.topk(min(cfg.max_coarse, ll.shape[1]), 1)
            ti, mi = torch.div(i, z - a, rounding_mode="floor"), i % (z - a)
            top_v = torch.cat([top_v, v], 1)
            top_i = torch.cat([top_i, (a + mi) * t + ti], 1)
            if top_v.shape[1] > cfg.max_coarse:
                top_v, sel = top_v.topk(cfg.max_coarse, 1)
                top_i = top_i.gather(1, sel)
        order = top_v.argsort(1, descending=True)
        top_v, top_i = top_v.gather(1, order), top_i.gather(1, order)
        rot_idx, t_idx = torch.div(top_i, t, rounding_mode="floor"), top_i % t
        prior = torch.zeros_like(top_v)
    else:
        centres = prev_rot[None].to(rdt)  # (C, B, 3, 3): the previous pose and its mates
        if stage.mates is not None:
            centres = torch.cat([centres, stage.mates.to(dev, rdt)[:, None] @ centres])
        bat, idx = local_grid(centres.reshape(-1, 3, 3), level, stage.local_range)
        if stage.mates is not None:  # back to images; neighbourhoods of two centres may overlap
            key = torch.unique((bat % b) * grid_size(level) + idx)
            bat, idx = torch.div(key, grid_size(level), rounding_mode="floor"), key % grid_size(level)
        counts = torch.bincount(bat, minlength=b)
        kmax = max(1, int(counts.max()))
        pos = torch.arange(bat.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cand = torch.zeros(b, kmax, dtype=torch.long, device=dev)
        valid = torch.zeros(b, kmax, dtype=torch.bool, device=dev)
        cand[bat, pos], valid[bat, pos] = idx, True
        rots = so3_grid(level, device=dev, dtype=rdt, indices=cand.reshape(-1)).reshape(b, kmax, 3, 3)
        vals = ref.values(rots.reshape(-1, 3, 3), k).reshape(b, kmax, -1)
        ll = log_likelihood_table(terms, vals, on_pixels=True)  # (B, T, K)
        sigma = stage.local_range / cfg.local_range
        ang = torch.stack([geodesic_distance(cen[:, None], rots) for cen in centres]).min(0).values  # (B, K)
        lp = torch.where(valid, -0.5 * (ang / sigma) ** 2, torch.full_like(ang, -math.inf))
        ll = (ll + lp[:, None, :]).reshape(b, -1)
        lse = torch.logsumexp(ll, 1)
        top_v, i = ll.topk(min(cfg.max_coarse, ll.shape[1]), 1)
        t_idx, k_idx = torch.div(i, kmax, rounding_mode="floor"), i % kmax
        rot_idx = cand.gather(1, k_idx)
        prior = lp.gather(1, k_idx)
    w, keep = _significant(top_v, lse, cfg.mass, cfg.max_coarse)
    shift = shifts.gather(1, t_idx[..., None].expand(-1, -1, 2))
    logw = torch.where(keep, top_v, torch.full_like(top_v, -math.inf))
    return rot_idx, shift, logw, prior, level


def _child_pass(y, c, s2, ref: _Reference, stage: _Stage, level, rot_idx, shift, logw, prior, prev_rot,
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


@dataclass
class _BatchPoses:
    """E-step outcome for ``B`` images: weighted pairs to insert and the MAP pose."""

    image: torch.Tensor  # (P,) index into the batch
    grid_index: torch.Tensor  # (P,) index into so3_grid(level)
    level: int
    shift: torch.Tensor  # (P, 2) px
    weight: torch.Tensor  # (P,)
    map_rotation: torch.Tensor  # (B, 3, 3)
    map_shift: torch.Tensor  # (B, 2)
    max_weight: torch.Tensor  # (B,)
    n_significant: torch.Tensor  # (B,)


def _posterior_mean_pose(poses: _BatchPoses, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, 3)`` chordal mean rotation and ``(B, 2)`` mean shift of each image's weighted pairs."""
    rdt = poses.map_rotation.dtype
    rots = so3_grid(poses.level, device=poses.weight.device, dtype=torch.float64, indices=poses.grid_index)
    w = poses.weight.double()
    total = torch.zeros(b, dtype=torch.float64, device=w.device).index_add_(0, poses.image, w)
    mean_r = weighted_mean_rotation(rots, w, poses.image, b)
    mean_t = torch.zeros(b, 2, dtype=torch.float64, device=w.device).index_add_(
        0, poses.image, w[:, None] * poses.shift.double()) / total.clamp_min(1e-300)[:, None]
    return mean_r.to(rdt), mean_t.to(poses.map_shift.dtype)


def _posterior_batch(y, c, s2, ref: _Reference, stage: _Stage, prev_rot, prev_shift, cfg: RefineConfig) -> _BatchPoses:
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
        w, keep = _significant(v, lse, cfg.mass, cap)
        order = order[:, :w.shape[1]]
        rot_idx, prior = idx.gather(1, order), pr.gather(1, order)
        shift = sh.gather(1, order[..., None].expand(-1, -1, 2))
        logw = torch.where(keep, v[:, :w.shape[1]], torch.full_like(w, -math.inf))
    w = w / w.sum(1, keepdim=True)
    bi, ki = keep.nonzero(as_tuple=True)
    return _BatchPoses(image=bi, grid_index=rot_idx[bi, ki], level=level, shift=shift[bi, ki], weight=w[bi, ki],
                       map_rotation=so3_grid(level, device=y.device, dtype=y.real.dtype, indices=rot_idx[:, 0]),
                       map_shift=shift[:, 0], max_weight=w[:, 0], n_significant=keep.sum(1))


def _modal_batch(y, c, s2, ref: _Reference, stage: _Stage, cfg: RefineConfig) -> _BatchPoses:
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
    return _BatchPoses(image=torch.arange(b, device=y.device), grid_index=res.grid_index.to(y.device),
                       level=res.level, shift=res.shifts.to(y.device), weight=ones,
                       map_rotation=res.rotations.to(y.device), map_shift=res.shifts.to(y.device), max_weight=ones,
                       n_significant=torch.ones(b, dtype=torch.long, device=y.device))


class _InsertPixels:
    """The pixels the M-step inserts: shells ``≤ k_max`` (RELION's ``current_size``: the map holds no
    data beyond the E-step's window) on the ``kx ≥ 0`` half-columns, with the multiplicities of
    :meth:`FourierAccumulator.add_points`."""

    def __init__(self, size: int, k_max: int, device, dtype):
        flat = used_pixels(size, k_max, device)
        col = flat % size
        keep = (col >= size // 2) | (col == 0)
        self.pixels = flat[keep]
        f = freq_grid_2d(size, device=device, dtype=dtype).reshape(-1, 2)[self.pixels]
        c = self.pixels % size
        half = torch.where((c == 0) | (c == size // 2), 0.5, 1.0).to(dtype)
        self.freqs, self.mult = f, half * (f.norm(dim=-1) <= 0.5).to(dtype)


def _insert_pairs(acc: FourierAccumulator, y, c, poses: _BatchPoses, where: _InsertPixels, chunk: int = 4096) -> None:
    """M-step sums of a batch: the weighted pairs (shift undone) summed per distinct grid rotation on
    the inserted pixels, then inserted once each."""
    px = where.pixels
    used, inv = torch.unique(poses.grid_index, return_inverse=True)
    s1 = torch.zeros(used.shape[0], px.numel(), dtype=y.dtype, device=y.device)
    s2 = torch.zeros(used.shape[0], px.numel(), dtype=y.real.dtype, device=y.device)
    yp = y.flatten(1)[:, px]  # (B, P)
    cp = None if c is None else c.flatten(1)[:, px]
    for s in range(0, poses.image.shape[0], chunk):
        i = poses.image[s:s + chunk]
        wt = poses.weight[s:s + chunk, None]
        # the shift undone on the inserted pixels: Y' = Y · exp(+2πi f·t) (cycles/px · px → turns)
        phase = 2 * math.pi * (poses.shift[s:s + chunk].to(where.freqs.dtype) @ where.freqs.T)
        yu = yp[i] * torch.polar(torch.ones_like(phase), phase)
        ci = torch.ones_like(yu.real) if cp is None else cp[i]
        s1.index_add_(0, inv[s:s + chunk], wt * ci * yu)
        s2.index_add_(0, inv[s:s + chunk], wt * ci * ci)
    rots = so3_grid(poses.level, device=y.device, dtype=y.real.dtype, indices=used)
    acc.add_points(s1, s2, rots, where.freqs, where.mult)


def initial_noise_spectrum(particles: Particles, indices: np.ndarray, n: int = 1000, device=None) -> torch.Tensor:
    """``(D//2+1,)`` starting ``σ²`` (float32): the mean per-shell power of up to ``n`` of the images,
    RELION's start. It includes the signal power, so the first E-step is tempered (broad posteriors)
    at high SNR; scaling it down by a background-variance estimate was tried and made the first
    iteration overconfident and lock onto the start map's noise (D = 24 test set, SNR 10)."""
    size = particles.box_size
    shells = shell_index_2d(size, device=device)
    nsh = size // 2 + 1
    num = torch.zeros(nsh, dtype=torch.float64, device=device)
    cnt = 0
    for _, images in iterate_batches(particles, 256, indices[:n]):
        num += shell_sum(fft2_centered(images.to(device).double()).abs().square().sum(0), shells, nsh)
        cnt += images.shape[0]
    per_shell = shell_sum(torch.ones(size, size, device=device), shells, nsh).double()
    return (num / (cnt * per_shell)).float()


def _stage(order: int, k_max: int, refinements: int, cfg: RefineConfig, size: int, pixel_size: float) -> _Stage:
    step = cfg.offset_step / 2 ** refinements
    rng = max(cfg.offset_range / 2 ** refinements, 3 * step) if refinements else cfg.offset_range
    diameter = _diameter(cfg, size, pixel_size)
    return _Stage(order=order, k_max=k_max, offset_range=rng, offset_step=step, local=order >= cfg.local_order,
                  local_range=cfg.local_range * math.radians(angular_step(order)), size=size,
                  pixel_size=pixel_size, diameter=diameter if cfg.coarse_size else 0.0)


def _reference_map(volume: torch.Tensor, cfg: RefineConfig, size: int, pixel_size: float) -> torch.Tensor:
    """The E-step reference made from a half's map: solvent-flattened when ``cfg.flatten_solvent``."""
    if not cfg.flatten_solvent:
        return volume
    return flatten_solvent(volume, 0.5 * _diameter(cfg, size, pixel_size) / pixel_size, cfg.mask_edge)


def _diameter(cfg: RefineConfig, size: int, pixel_size: float) -> float:
    """The particle diameter, Å: ``cfg.particle_diameter``, or 0.8 × the box."""
    return cfg.particle_diameter if cfg.particle_diameter else 0.8 * size * pixel_size


def _shell_of(resolution: float, size: int, pixel_size: float) -> float:
    return 0.0 if not math.isfinite(resolution) or resolution <= 0 else size * pixel_size / resolution


def _write_iteration(run, it: int, particles: Particles, state: dict) -> None:
    from ..io.mrc import write_volume
    from ..io.star import write_star

    px = particles.pixel_size
    write_volume(run.path(f"iter{it:03d}_half1.mrc"), state["unfiltered"][0].float().cpu().numpy(), px)
    write_volume(run.path(f"iter{it:03d}_half2.mrc"), state["unfiltered"][1].float().cpu().numpy(), px)
    run.write_json(f"iter{it:03d}_fsc.json", {"fsc": state["history"][-1]["fsc"],
                                               "resolution_A": state["history"][-1]["resolution_A"]})
    write_star(run.path(f"iter{it:03d}_particles.star"), poses_to_particles(particles, state))


def poses_to_particles(particles: Particles, state: dict) -> Particles:
    """``particles`` with the refined rotations and shifts and ``rlnRandomSubset`` (1/2) of ``state``."""
    from dataclasses import replace

    extra = dict(particles.extra)
    extra["rlnRandomSubset"] = state["half"].cpu().numpy().astype(np.int64) + 1
    return replace(particles, rotations=state["rotations"].float().cpu(), shifts=state["shifts"].float().cpu(),
                   extra=extra)


def _iteration(particles: Particles, state: dict, cfg: RefineConfig, dev, progress: bool) -> dict:
    """One EM iteration over both halves; returns the new state (module docstring)."""
    size, px = particles.box_size, particles.pixel_size
    nsh = size // 2 + 1
    stage = _stage(state["order"], state["k_max"], state["refinements"], cfg, size, px)
    stage.mates = state.get("relax_ops")
    half = state["half"].cpu().numpy()
    rotations, shifts = state["rotations"].clone(), state["shifts"].clone()
    change = torch.full((len(particles),), float("nan"), dtype=torch.float64)
    max_w = torch.zeros(len(particles), dtype=torch.float64)
    n_sig = torch.zeros(len(particles), dtype=torch.float64)
    shells = shell_index_2d(size, device=dev)
    per_shell = shell_sum(torch.ones(size, size, device=dev), shells, nsh).double()
    accs, sigma2 = [], []
    bar = tqdm(total=len(particles), desc=f"iter {state['iteration'] + 1} (order {stage.order}, "
               f"{'local' if stage.local else 'global'}, k≤{stage.k_max})", unit="img", disable=not progress)
    for h in (0, 1):
        ref = _Reference(_reference_map(state["volumes"][h].to(dev), cfg, size, px), cfg.pad, stage.k_max,
                         int((half == h).sum()))
        s2 = state["sigma2"][h].to(dev)
        acc = FourierAccumulator(size, cfg.pad, dev)
        where = _InsertPixels(size, stage.k_max, dev, torch.float32)
        num = torch.zeros(nsh, dtype=torch.float64, device=dev)
        count = 0
        for idx, images in iterate_batches(particles, cfg.batch_size, np.nonzero(half == h)[0]):
            it = torch.as_tensor(idx)
            y = fft2_centered(images.to(dev))
            c = None if particles.ctf is None else ctf_2d(particles.ctf[it].to(dev), size, px, device=dev)
            prev_r, prev_t = rotations[it].to(dev), shifts[it].to(dev)
            if cfg.pose_inference == "modal":
                poses = _modal_batch(y, c, s2, ref, stage, cfg)
            else:
                poses = _posterior_batch(y, c, s2, ref, stage, prev_r, prev_t, cfg)
            _insert_pairs(acc, y, c, poses, where)
            # σ²: residual at the MAP pose under the E-step reference, all shells
            p = ref.slicer(poses.map_rotation)
            r = phase_shift(y, -poses.map_shift) - (p if c is None else c * p)
            num += shell_sum(r.abs().square().sum(0), shells, nsh).double()
            count += y.shape[0]
            est_r, est_t = ((poses.map_rotation, poses.map_shift) if cfg.pose_estimate == "map"
                            else _posterior_mean_pose(poses, y.shape[0]))
            change[it] = torch.rad2deg(geodesic_distance(est_r.double(), prev_r.double())).cpu()
            rotations[it] = est_r.float().cpu()
            shifts[it] = est_t.float().cpu()
            max_w[it] = poses.max_weight.double().cpu()
            n_sig[it] = poses.n_significant.double().cpu()
            bar.update(len(idx))
        accs.append(acc)
        sigma2.append((num / (count * per_shell)).float())
    bar.close()

    # M-step: gold-standard FSC of weakly regularised halves → τ² → MAP halves; full map from both
    weights = [a.shell_weight() for a in accs]
    weak = [a.reconstruct(1e-3 * w.mean() * torch.ones(nsh, dtype=torch.float64, device=w.device))
            for a, w in zip(accs, weights)]
    # shells beyond the E-step's band hold no data, only what the crop and mask leak: no correlation
    data = ((weights[0] > 0) & (weights[1] > 0)).cpu().numpy()
    curve = np.where(data, fsc_curve(weak[0], weak[1]), 0.0)
    volumes = []
    for a, w, s2 in zip(accs, weights, sigma2):
        tau2 = tau2_from_fsc(curve, s2, w, cfg.tau2_fudge)
        volumes.append(a.reconstruct(map_regularisation(tau2, s2)).float())
    res = float(resolution_at(curve, 0.143, px, size))
    merged = accs[0].merged(accs[1])
    f_full = 2 * curve / (1 + np.clip(curve, -0.999, None))
    s2_full = 0.5 * (sigma2[0] + sigma2[1])
    full = merged.reconstruct(map_regularisation(tau2_from_fsc(f_full, s2_full, merged.shell_weight(),
                                                               cfg.tau2_fudge), s2_full)).float()

    # schedule
    shell = _shell_of(res, size, px)
    gain = shell - state["best_shell"]
    fine_step = angular_step(stage.order + 1)
    first = state["iteration"] == 0
    med_change = float("inf") if first else float(np.nanmedian(change.numpy()))
    no_gain = state["no_gain"] + 1 if gain < cfg.min_gain_shells else 0
    stalled = (not first) and no_gain > 0 and (med_change <= 2 * fine_step or no_gain >= 2)
    order, refinements, converged = state["order"], state["refinements"], False
    if stalled:
        if order < cfg.max_order:
            order, refinements, no_gain = order + 1, refinements + 1, 0
        else:
            converged = True
    hist = {"iteration": state["iteration"] + 1, "order": stage.order, "angular_step_deg": fine_step,
            "local": stage.local, "k_max": stage.k_max, "offset_range_px": stage.offset_range,
            "offset_step_px": stage.offset_step / 2, "resolution_A": res, "fsc": np.asarray(curve).tolist(),
            "median_pose_change_deg": med_change, "mean_max_weight": float(max_w.mean()),
            "mean_significant": float(n_sig.mean()), "stalled": bool(stalled)}
    return {**state, "iteration": state["iteration"] + 1, "volumes": [v.cpu() for v in volumes],
            "unfiltered": [v.float().cpu() for v in weak],
            "full": full.cpu(), "sigma2": [s.cpu() for s in sigma2], "rotations": rotations, "shifts": shifts,
            "order": order, "refinements": refinements, "no_gain": no_gain,
            "best_shell": max(state["best_shell"], shell),
            "k_max": int(min(size // 2, math.floor(shell) + cfg.incr_size)),
            "converged": converged, "fsc": torch.as_tensor(np.asarray(curve)), "resolution": res,
            "history": state["history"] + [hist]}


def _initial_state(particles: Particles, initial_volume: torch.Tensor, cfg: RefineConfig, dev) -> dict:
    size, px = particles.box_size, particles.pixel_size
    if tuple(initial_volume.shape) != (size, size, size):
        raise InputError(f"initial map is {tuple(initial_volume.shape)}, the particles need ({size}, {size}, {size})")
    vol = initial_volume.detach().to(device=dev, dtype=torch.float32)
    if cfg.initial_lowpass:
        vol = lowpass_volume(vol, float(cfg.initial_lowpass), px)
    half = torch.as_tensor(half_set_labels(particles, cfg.seed))
    if int(half.min()) == int(half.max()):
        raise InputError(f"{particles.name}: every particle is in one half-set (rlnRandomSubset); need both")
    sigma2 = [initial_noise_spectrum(particles, np.nonzero(half.numpy() == h)[0], device=dev).cpu() for h in (0, 1)]
    start_res = float(cfg.initial_lowpass) if cfg.initial_lowpass else 2 * px * 4
    n_sym = cyclic_order(cfg.relax_symmetry)
    relax = {}
    if n_sym > 1:  # the pseudo-symmetry axis, in the initial map's frame
        axis, score = symmetry_axis(vol.cpu(), n_sym)
        relax = {"relax_ops": cyclic_operators(n_sym, axis).float(), "relax_axis": axis.float(),
                 "relax_axis_score": score}
    shell = _shell_of(start_res, size, px)
    n = len(particles)
    return {"iteration": 0, "volumes": [vol.cpu(), vol.clone().cpu()], "full": vol.cpu(), "sigma2": sigma2,
            "rotations": torch.eye(3).repeat(n, 1, 1), "shifts": torch.zeros(n, 2), "half": half,
            "order": cfg.healpix_order, "refinements": 0, "no_gain": 0, "best_shell": shell,
            "k_max": int(min(size // 2, math.floor(shell) + cfg.incr_size)), "converged": False,
            "fsc": torch.zeros(size // 2 + 1, dtype=torch.float64), "resolution": float("inf"), "history": [],
            "config": asdict(cfg), "elapsed_s": 0.0, **relax}


def auto_refine(particles: Particles, initial_volume: torch.Tensor, *, config: RefineConfig | None = None,
                run=None, device=None, progress: bool = True, resume: bool = False) -> RefineResult:
    """Gold-standard auto-refinement of ``particles`` (CTF from their metadata, poses unknown) from
    ``initial_volume`` ``(D, D, D)`` ``[z, y, x]`` (low-passed to ``config.initial_lowpass`` Å first).

    config: :class:`RefineConfig` (default: RELION's GUI defaults). run: a
    :class:`~cryolens.io.runfolder.RunFolder` for per-iteration maps, FSCs, STAR files and the
    checkpoint (needed for ``resume``). device: compute device (default CPU). resume: continue from
    ``run``'s checkpoint (it must exist and have been made with the same options, except
    ``max_iterations``, which may be raised to continue a run).
    Returns a :class:`RefineResult` (CPU tensors).
    """
    from ..io.checkpoint import load_checkpoint, save_checkpoint

    cfg = config or RefineConfig()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if resume:
        if run is None:
            raise InputError("resume needs a run folder holding checkpoint.pt")
        state = load_checkpoint(run.path(CHECKPOINT))
        now = asdict(cfg)
        made = {**asdict(RefineConfig()), **state["config"]}  # options added since: their defaults
        diff = sorted(k for k in now if k != "max_iterations" and made.get(k) != now[k])
        if diff:
            raise InputError(f"{run.path(CHECKPOINT)}: made with different options ({', '.join(diff)})")
    else:
        state = _initial_state(particles, initial_volume, cfg, dev)
    while not state["converged"] and state["iteration"] < cfg.max_iterations:
        t0 = time.perf_counter()
        state = _iteration(particles, state, cfg, dev, progress)
        state["elapsed_s"] = state["elapsed_s"] + time.perf_counter() - t0
        state["history"][-1]["elapsed_s"] = state["elapsed_s"]
        if run is not None:
            _write_iteration(run, state["iteration"], particles, state)
            save_checkpoint(run.path(CHECKPOINT), state)
        if progress:
            h = state["history"][-1]
            tqdm.write(f"iteration {h['iteration']}: {h['resolution_A']:.2f} Å, step {h['angular_step_deg']:.2f}°, "
                       f"median pose change {h['median_pose_change_deg']:.2f}°")
    halves = tuple(v.float() for v in state.get("unfiltered", state["volumes"]))
    return RefineResult(volume=state["full"].float(), half_maps=halves,
                        fsc=state["fsc"].numpy(), resolution=float(state["resolution"]),
                        rotations=state["rotations"].float(), shifts=state["shifts"].float(),
                        half=state["half"].numpy(), history=state["history"], pixel_size=particles.pixel_size,
                        converged=bool(state["converged"]), sigma2=(state["sigma2"][0], state["sigma2"][1]),
                        relax_axis=state.get("relax_axis"))

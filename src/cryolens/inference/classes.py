"""Discrete heterogeneity: the posterior over (class, rotation, shift) and one Class3D EM iteration.

RELION's Class3D (Scheres 2012, J. Struct. Biol. 180:519; METHODS.md) with ``K`` volumes ``V_k``: for
image ``Y_i`` and every class ``k`` and grid pose ``(R_m, t_j)``, with the Gaussian log-likelihood
``ℓ_ikmj`` of :mod:`cryolens.inference.likelihood` (per-shell ``σ²``),

    w_ikmj = exp(ℓ_ikmj + log π_k + log π_m + log π_j − log Z_i),   log Z_i = logsumexp_{k,m,j}(…)

(uniform pose priors ``π_m = 1/M``, ``π_j = 1/T`` by default; ``π_k`` the class priors).
The class posterior ``P(k | Y_i) = Σ_{m,j} w_ikmj`` is computed exactly (a running log-sum-exp per
class), the pose weights pruned to the significant set as in :mod:`~cryolens.inference.posterior`
(``mass``, ``max_significant``) — now over ``(k, m, j)`` jointly, so a class that explains an image
badly contributes no insertions.

**Memory**: classes × rotation chunks are scored one chunk at a time with a running log-sum-exp per
class and a running top ``max_significant``; the image terms are built once and shared by all
classes. Peak memory as :func:`~cryolens.inference.posterior.pose_posterior` plus ``B·K`` reals; no
``B × K × M × T`` table is ever held.

**M-step** (:func:`class_em_iteration`), per class as RELION's:

- volumes: per-class weighted back-projection (per-rotation sums ``Σ w C Y'``, ``Σ w C²`` inserted
  once per used rotation, as :mod:`~cryolens.inference.em`), map ``data / (weight + λ_k(s))``
  (:func:`map_regularisation`: RELION's weak prior where ``τ²`` is zero, none below ``minres_map``) with
  ``λ_k(s) = σ²(s) / (pad³ · T · τ²_k(s))`` — RELION's ``1 / (oversampling_correction · tau2_fudge ·
  τ²)`` in our un-whitened units (``backprojector.cpp``; ``T`` = ``--tau2_fudge``, RELION's default 4
  for single particles; the ``pad³`` factor is RELION's ``oversampling_correction``, read from its
  source, not re-derived). Without half-maps, ``τ²_k(s)`` is, as RELION's (its
  ``MlModel::setFourierTransformMaps``, checked against its ``_rlnReferenceTau2``), the per-shell power
  of the projector's transform of class ``k``'s current map — gridding-corrected and zero-padded
  (:func:`projector_power_spectrum`): a start map low-passed to zero keeps ~1e-4 … 1e-6 of the peak
  power in the shells above its cut-off there, so those shells can grow over the iterations;
- class priors: ``π_k = (1/N) Σ_i P(k | Y_i)`` (the mean posterior class mass);
- noise: ``σ²(s)`` the posterior-weighted mean residual power with the current references (em.py).

**Fixed poses** (:func:`class_em_iteration_fixed_poses`, RELION's ``--skip_align``): each image keeps
the pose it comes with (e.g. from a consensus refinement); only the class is hidden, ``P(k | Y_i) ∝ π_k
exp(ℓ_ik)`` with ``ℓ_ik`` the likelihood at that pose, and the M-step is the same with one pose per image.

**Modal variant** (``modal=True``): each image is assigned only its best ``(k, m, j)`` (the mode of
the posterior, weight 1); class priors are then the fraction of images assigned to each class
(hard-EM / "classification EM").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..imaging.ctf import CTFParams
from ..imaging.fft import fft2_centered, fft3_centered, ifft3_centered
from ..imaging.grids import shell_index_2d, shell_index_3d, shell_sum
from ..imaging.shift import phase_shift
from ..imaging.slice import prepare_volume_ft
from ..io.particles import Particles
from .em import _batches, _insert_aggregates
from .likelihood import (SliceFn, as_slicer, ctf_images, gaussian_log_likelihood, log_likelihood_table, log_normaliser,
                         prepare_image_terms, slice_values_at, used_pixels)
from .posterior import _log_prior, default_rotation_chunk
from .reconstruct import FourierAccumulator


@dataclass
class ClassPosePosterior:
    """Significant (class, rotation, shift) triples of ``B`` images, sorted by decreasing weight.

    class_index, rotation_index, shift_index: ``(B, S)`` int64 (``−1`` past ``count``). weight: ``(B, S)``
    posterior probabilities (0 past ``count``; not renormalised). count: ``(B,)``. log_evidence: ``(B,)``
    ``log Z_i``. kept_mass: ``(B,)``. class_probability: ``(B, K)`` exact ``P(k | Y_i)`` (all poses).
    map_log_likelihood: ``(B,)`` log-likelihood (no prior) of the MAP triple.
    """

    class_index: torch.Tensor
    rotation_index: torch.Tensor
    shift_index: torch.Tensor
    weight: torch.Tensor
    count: torch.Tensor
    log_evidence: torch.Tensor
    kept_mass: torch.Tensor
    class_probability: torch.Tensor
    map_log_likelihood: torch.Tensor

    def dense(self, n_classes: int, n_rotations: int, n_shifts: int) -> torch.Tensor:
        """``(B, K, M, T)`` table of the significant weights (0 elsewhere) — for tests and small grids."""
        b = self.weight.shape[0]
        out = self.weight.new_zeros(b, n_classes * n_rotations * n_shifts)
        valid = self.rotation_index >= 0
        flat = ((self.class_index * n_rotations + self.rotation_index) * n_shifts + self.shift_index).clamp_min(0)
        out.scatter_add_(1, flat, torch.where(valid, self.weight, torch.zeros_like(self.weight)))
        return out.reshape(b, n_classes, n_rotations, n_shifts)


def _log_class_prior(log_class_prior: torch.Tensor | None, k: int, b: int, device, dtype) -> torch.Tensor:
    """``(1 or B, K)`` log class prior; uniform by default."""
    return _log_prior(log_class_prior, k, b, "log_class_prior", device, dtype)


@torch.no_grad()
def class_pose_posterior(images_ft: torch.Tensor, slices: Sequence[SliceFn | torch.Tensor], rotations: torch.Tensor,
                         shifts: torch.Tensor, sigma2: torch.Tensor, *, ctf: torch.Tensor | CTFParams | None = None,
                         pixel_size: float | None = None, k_max: int | None = None,
                         log_class_prior: torch.Tensor | None = None,
                         log_prior_rotation: torch.Tensor | None = None, log_prior_shift: torch.Tensor | None = None,
                         mass: float = 0.999, max_significant: int = 1000,
                         rotation_chunk: int | None = None) -> ClassPosePosterior:
    """Posterior over every (class, rotation, shift) for a batch of images (module docstring).

    images_ft: ``(B, D, D)`` complex centered transforms. slices: one per class, a
    :data:`~cryolens.inference.likelihood.SliceFn`, an oversampled volume transform ``(Dp, Dp, Dp)``,
    or the slice values ``(M, N_p)`` complex of every rotation on the pixels of
    :func:`~cryolens.inference.likelihood.used_pixels` ``(D, k_max)`` (precomputed once and reused
    across batches: :func:`slice_values`).
    rotations: ``(M, 3, 3)`` image → volume frame. shifts: ``(T, 2)`` or ``(B, T, 2)`` px ``(x, y)``.
    sigma2: ``(D//2+1,)`` noise power per Fourier component. ctf: ``(B, D, D)`` or :class:`CTFParams`
    (with ``pixel_size`` Å/px). log_class_prior: ``(K,)`` ``log π_k``, or ``(B, K)`` per image
    (e.g. RELION's random class assignment of the first iteration); uniform when ``None``.
    log_prior_rotation ``(M,)``/``(B, M)``, log_prior_shift ``(T,)``/``(B, T)``: as ``pose_posterior``.
    mass, max_significant: the significant set over ``(k, m, j)``. rotation_chunk: ``M_c``.
    """
    b, size = images_ft.shape[0], images_ft.shape[-1]
    dev, rdt = images_ft.device, images_ft.real.dtype
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if max_significant < 1:
        raise ValueError(f"max_significant must be >= 1, got {max_significant}")
    pre = [s if isinstance(s, torch.Tensor) and s.dim() == 2 else None for s in slices]
    slicers = [None if p is not None else as_slicer(s, size) for s, p in zip(slices, pre, strict=True)]
    n_cls = len(slicers)
    rot = rotations.to(dev, rdt)
    m, t = rot.shape[0], shifts.shape[-2]
    c = ctf_images(ctf, b, size, pixel_size, dev, rdt)
    terms = prepare_image_terms(images_ft, sigma2, shifts, c, k_max)
    lp_k = _log_class_prior(log_class_prior, n_cls, b, dev, rdt)
    lp_r = _log_prior(log_prior_rotation, m, b, "log_prior_rotation", dev, rdt)
    lp_t = _log_prior(log_prior_shift, t, b, "log_prior_shift", dev, rdt)
    chunk = default_rotation_chunk(b, t, size) if rotation_chunk is None else int(rotation_chunk)
    keep_n = min(max_significant, n_cls * m * t)

    lse_k = torch.full((b, n_cls), -math.inf, device=dev, dtype=rdt)
    top_v = torch.empty(b, 0, device=dev, dtype=rdt)
    top_k = torch.empty(b, 0, device=dev, dtype=torch.long)
    top_r = torch.empty(b, 0, device=dev, dtype=torch.long)
    top_t = torch.empty(b, 0, device=dev, dtype=torch.long)
    for kc in range(n_cls):
        for start in range(0, m, chunk):
            stop = min(m, start + chunk)
            mc = stop - start
            if pre[kc] is not None:
                ll = log_likelihood_table(terms, pre[kc][start:stop], on_pixels=True)  # (B, T, M_c)
            else:
                ll = log_likelihood_table(terms, slicers[kc](rot[start:stop]))
            lp = (ll + lp_t[:, :, None] + lp_r[:, None, start:stop] + lp_k[:, kc, None, None]).reshape(b, t * mc)
            lse_k[:, kc] = torch.logaddexp(lse_k[:, kc], torch.logsumexp(lp, dim=1))
            v, i = lp.topk(min(keep_n, t * mc), dim=1)
            top_v = torch.cat([top_v, v], 1)
            top_k = torch.cat([top_k, torch.full_like(i, kc)], 1)
            top_r = torch.cat([top_r, start + i % mc], 1)
            top_t = torch.cat([top_t, torch.div(i, mc, rounding_mode="floor")], 1)
            if top_v.shape[1] > keep_n:
                v, sel = top_v.topk(keep_n, dim=1)
                top_v, top_k, top_r, top_t = v, top_k.gather(1, sel), top_r.gather(1, sel), top_t.gather(1, sel)
    order = top_v.argsort(dim=1, descending=True)
    top_v, top_k, top_r, top_t = (x.gather(1, order) for x in (top_v, top_k, top_r, top_t))
    lse = torch.logsumexp(lse_k, dim=1)

    w = torch.exp(top_v - lse[:, None])
    count = ((torch.cumsum(w, dim=1) < mass).sum(1) + 1).clamp(max=keep_n)
    keep = torch.arange(keep_n, device=dev)[None] < count[:, None]
    w = torch.where(keep, w, torch.zeros_like(w))
    map_prior = (lp_k.expand(b, n_cls).gather(1, top_k[:, :1])[:, 0] + lp_r.expand(b, m).gather(1, top_r[:, :1])[:, 0]
                 + lp_t.expand(b, t).gather(1, top_t[:, :1])[:, 0])
    minus = torch.full_like(top_r, -1)
    return ClassPosePosterior(class_index=torch.where(keep, top_k, minus),
                              rotation_index=torch.where(keep, top_r, minus),
                              shift_index=torch.where(keep, top_t, minus), weight=w, count=count,
                              log_evidence=lse, kept_mass=w.sum(1), class_probability=torch.exp(lse_k - lse[:, None]),
                              map_log_likelihood=top_v[:, 0] - map_prior)


def slice_values(slicer: SliceFn, rotations: torch.Tensor, size: int, k_max: int | None = None,
                 chunk: int = 512) -> torch.Tensor:
    """``(M, N_p)`` complex values of the central slices of every rotation ``(M, 3, 3)`` on the pixels
    of :func:`~cryolens.inference.likelihood.used_pixels` ``(size, k_max)`` — the form
    :func:`class_pose_posterior` accepts to skip re-rendering the slices for every batch."""
    pixels = used_pixels(size, k_max, rotations.device)
    return torch.cat([slice_values_at(slicer, rotations[a:a + chunk], pixels)
                      for a in range(0, rotations.shape[0], chunk)])


def fourier_crop_images(images_ft: torch.Tensor, size: int) -> torch.Tensor:
    """Centered transforms ``(B, D, D)`` → ``(B, d, d)`` (the central ``d × d`` frequencies), scaled by
    ``(d/D)²`` so that the real-space images keep their values (a down-sampling to pixel ``px·D/d``)."""
    d0 = images_ft.shape[-1]
    lo = d0 // 2 - size // 2
    return images_ft[..., lo:lo + size, lo:lo + size] * (size / d0) ** 2


def resize_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier crop or zero-pad a real ``(D, D, D)`` volume to ``(d, d, d)``: the map at pixel
    ``px·D/d``, its transform scaled by ``(d/D)²`` so that its projections match images cropped by
    :func:`fourier_crop_images` (voxel values scale by ``D/d``: a projection sums ``d`` voxels of
    ``D/d`` times the length). The unpaired Nyquist planes (index 0 of each axis) of the smaller box
    are dropped, so the result stays the transform of a real map."""
    d0 = volume.shape[-1]
    if size == d0:
        return volume.clone()
    f = fft3_centered(volume)
    if size > d0:
        f[0], f[:, 0], f[:, :, 0] = 0, 0, 0
    if size < d0:
        lo = d0 // 2 - size // 2
        g = f[lo:lo + size, lo:lo + size, lo:lo + size].clone()
        g[0], g[:, 0], g[:, :, 0] = 0, 0, 0
    else:
        g = f.new_zeros((size, size, size))
        lo = size // 2 - d0 // 2
        g[lo:lo + d0, lo:lo + d0, lo:lo + d0] = f
    return ifft3_centered(g).real * (size / d0) ** 2


def power_spectrum(volume: torch.Tensor) -> torch.Tensor:
    """``(D//2+1,)`` float64 per-shell mean power ``⟨|Ṽ(f)|²⟩`` of a real ``(D, D, D)`` volume's
    unnormalised centered transform (shells ``round(|f|·D)``; the units of central-slice values, so
    that it is directly a prior variance ``τ²`` of the values the likelihood compares)."""
    size = volume.shape[-1]
    nsh = size // 2 + 1
    p = fft3_centered(volume.double()).abs().square()
    shells = shell_index_3d(size, device=volume.device).reshape(-1)
    keep = shells < nsh
    s = torch.zeros(nsh, dtype=torch.float64, device=volume.device).index_add_(0, shells[keep], p.reshape(-1)[keep])
    n = torch.zeros(nsh, dtype=torch.float64, device=volume.device).index_add_(
        0, shells[keep], torch.ones_like(p.reshape(-1)[keep]))
    return s / n.clamp_min(1)


def projector_power_spectrum(volume_ft: torch.Tensor, size: int) -> torch.Tensor:
    """``(size//2+1,)`` float64 per-shell mean power of a projector's transform ``(pD, pD, pD)`` (the
    gridding-corrected, zero-padded transform of :func:`~cryolens.imaging.slice.prepare_volume_ft`): the
    radial mean over padded voxels with ``round(r / pad) = s``, as RELION's ``τ²`` of a class (the power
    spectrum its ``Projector::computeFourierTransformMap`` returns for the reference it projects). Same
    units as :func:`power_spectrum` (zero padding keeps the unnormalised sums); unlike it, a map
    low-passed to zero keeps the small power the gridding correction spreads into every shell
    (~1e-4 … 1e-6 of the peak), which is what lets RELION's classes grow past their start's low-pass."""
    padded = volume_ft.shape[-1]
    nsh = size // 2 + 1
    keep, shells, count = _padded_shells(padded, size, str(volume_ft.device))
    p = volume_ft.abs().double().square().reshape(-1)[keep]
    return torch.zeros(nsh, dtype=torch.float64, device=volume_ft.device).index_add_(0, shells, p) / count


@functools.lru_cache(maxsize=16)
def _padded_shells(padded: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For :func:`projector_power_spectrum` (computed once per grid): the flat indices of the padded
    voxels with ``round(r / pad) < size//2 + 1``, their shell, and the voxel count of each shell."""
    pad = padded // size
    nsh = size // 2 + 1
    shells = torch.round(shell_index_3d(padded, device=device).double() / pad).long().reshape(-1)
    keep = torch.nonzero(shells < nsh).reshape(-1)
    count = torch.bincount(shells[keep], minlength=nsh).double().clamp_min(1)
    return keep, shells[keep], count


def class_regularisation(sigma2: torch.Tensor, tau2: torch.Tensor, tau2_fudge: float = 4.0,
                         pad: int = 2) -> torch.Tensor:
    """``(…, D//2+1)`` float64 ``λ(s) = σ²(s) / (pad³ · T · τ²(s))`` (module docstring); ``∞`` where ``τ² = 0``."""
    t2 = tau2.double() * (tau2_fudge * pad ** 3)
    s2 = sigma2.to(device=t2.device, dtype=torch.float64)
    return torch.where(t2 > 0, s2 / t2.clamp_min(1e-300), torch.full_like(t2, float("inf")))


#: τ² below this fraction of its largest shell counts as zero (a low-passed start map's high shells; float
#: rounding leaves ~1e-14 there, where RELION's double precision leaves ~1e-35 under its absolute 1e-20).
TAU2_ZERO = 1e-10
#: RELION's prior where τ² is zero: ``1/τ²`` replaced by ``1 / (0.001 · weight)`` (its whitened weights).
WEAK_PRIOR = 1e-3


def map_regularisation(sigma2: torch.Tensor, tau2: torch.Tensor, tau2_fudge: float = 4.0, pad: int = 2,
                       minres_map: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """RELION's MAP term of a class reconstruction (``backprojector.cpp``), per shell ``(…, D//2+1)`` float64:
    ``(λ, c)`` for :meth:`~cryolens.inference.reconstruct.FourierAccumulator.reconstruct`, the regulariser
    of a voxel with weight ``W = Σ w C²`` being ``λ(s) + c(s) / W``. ``D`` (the box of the arrays) is
    read off ``sigma2``'s length.

    - ``τ²(s) > 0``: ``λ = σ²/(pad³ T τ²)`` (:func:`class_regularisation`), ``c = 0``;
    - ``τ²(s)`` zero (below :data:`TAU2_ZERO` × its largest shell: a start map low-passed to ``--ini_high``
      has no power above it): RELION's ``invtau2 = 1 / (0.001 · invw)``. RELION's whitened weight is
      ``invw = κ W`` with ``κ = 2 D⁴ / σ²`` (its transforms are divided by ``D²`` and its ``σ²`` is per
      real component), so here ``λ = 0`` and ``c = 1 / (0.001 κ²) = σ⁴ / (0.004 D⁸)``: a prior that
      vanishes wherever data accumulate, so that frequencies the start map lacked can grow (with
      ``λ = ∞`` they would stay zero in every later iteration);
    - shells below ``minres_map`` (RELION's ``--minres_map``, default 5): no prior (``λ = c = 0``).
    """
    lam = class_regularisation(sigma2, tau2, tau2_fudge, pad)
    t2 = tau2.double().to(lam.device)
    zero = t2 <= TAU2_ZERO * t2.amax(-1, keepdim=True).clamp_min(0)
    s2 = sigma2.to(device=lam.device, dtype=torch.float64)
    box = 2 * (s2.shape[-1] - 1)
    c = s2.square() / (4 * WEAK_PRIOR * float(box) ** 8)
    inv = torch.where(zero, c.expand_as(lam), torch.zeros_like(lam))
    lam = torch.where(zero, torch.zeros_like(lam), lam)
    if minres_map > 0:
        lam[..., :minres_map] = 0
        inv[..., :minres_map] = 0
    return lam, inv


def _log_priors(class_prior: torch.Tensor | None, n_cls: int, device, dtype) -> torch.Tensor:
    """``log π`` ``(K,)`` or ``(N, K)`` (``−inf`` where a prior is 0); uniform when ``None``."""
    prior = (torch.full((n_cls,), 1.0 / n_cls, dtype=torch.float64) if class_prior is None
             else class_prior.double())
    if prior.shape[-1] != n_cls or prior.dim() > 2:
        raise ValueError(f"class_prior must be ({n_cls},) or (N, {n_cls}), got {tuple(prior.shape)}")
    return torch.where(prior > 0, torch.log(prior.clamp_min(1e-300)),
                       torch.full_like(prior, -math.inf)).to(device=device, dtype=dtype)


def _data_vs_prior(accs: Sequence[FourierAccumulator], sigma2: torch.Tensor, tau2: torch.Tensor, tau2_fudge: float,
                   pad: int) -> torch.Tensor:
    """``(K, D//2+1)`` RELION's ``data_vs_prior`` of each class accumulator, against the prior in every
    shell (no ``minres_map`` exemption: this is a report)."""
    lam, inv = map_regularisation(sigma2, tau2, tau2_fudge, pad)
    return torch.stack([torch.where(inv[k] > 0, a.shell_weight(2) / inv[k].clamp_min(1e-300), a.shell_weight() / lam[k])
                        for k, a in enumerate(accs)])


def _working_maps(volumes: torch.Tensor, sigma2: torch.Tensor, tau2: torch.Tensor | None, size: int, pad: int,
                  dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[SliceFn]]:
    """The maps of one Class3D iteration in its working box ``size``: ``(vols (K, d, d, d), σ² (d//2+1,),
    τ² (K, d//2+1), slicers)`` — maps resized, σ² and a given τ² scaled by ``(d/D)⁴`` (else τ² of the
    resized maps), one slicer per class."""
    full = volumes.shape[-1]
    ratio, nsh = size / full, size // 2 + 1
    vols = torch.stack([resize_volume(v, size) for v in volumes.to(dev)])
    s2 = sigma2.to(device=dev, dtype=volumes.dtype)[:nsh] * ratio ** 4
    fts = [prepare_volume_ft(v, pad) for v in vols]
    tau2 = (torch.stack([projector_power_spectrum(f, size) for f in fts]) if tau2 is None
            else tau2.to(dev)[:, :nsh] * ratio ** 4)
    return vols, s2, tau2, [as_slicer(f, size) for f in fts]


def _class_maps(accs: Sequence[FourierAccumulator], vols: torch.Tensor, s2: torch.Tensor, tau2: torch.Tensor,
                tau2_fudge: float, pad: int, minres_map: int, full: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """M-step maps of the class accumulators (a class with nothing inserted keeps its map), back at box
    ``full``: ``(volumes, their τ², λ used, data_vs_prior)``."""
    lam, inv_lam = map_regularisation(s2, tau2, tau2_fudge, pad, minres_map)
    work_vols = [a.reconstruct(lam[k], inv_lam[k]) if a.count > 0 else vols[k] for k, a in enumerate(accs)]
    dvp = _data_vs_prior(accs, s2, tau2, tau2_fudge, pad)
    new_vols = torch.stack([resize_volume(v, full) for v in work_vols])
    new_tau2 = torch.stack([projector_power_spectrum(prepare_volume_ft(v, pad), full) for v in new_vols])
    return new_vols, new_tau2, lam, dvp


@dataclass
class ClassEMResult:
    """The outcome of one Class3D EM iteration over ``N`` images and ``K`` classes.

    volumes: ``(K, D, D, D)`` new maps. class_prior: ``(K,)`` new ``π_k``. sigma2: ``(D//2+1,)`` new noise
    power. tau2: ``(K, D//2+1)`` projector power spectra of the new maps (the next ``τ²``). regularisation:
    ``(K, D//2+1)`` the ``λ_k`` used. data_vs_prior: ``(K, D//2+1)`` shell mean of the accumulated
    weight ``Σ w C²`` over ``λ_k`` (RELION's ``data_vs_prior``: where it falls below 1 the prior
    dominates — RELION's resolution estimate of a class). log_likelihood: ``Σ_i log Z_i + N · log_normaliser`` under the
    *input* volumes, priors and σ². class_probability: ``(N, K)``. labels: ``(N,)`` most probable class.
    map_rotation_index, map_shift_index: ``(N,)`` the MAP pose; map_shift: ``(N, 2)`` px;
    max_weight: ``(N,)``; n_significant: ``(N,)``.
    """

    volumes: torch.Tensor
    class_prior: torch.Tensor
    sigma2: torch.Tensor
    tau2: torch.Tensor
    regularisation: torch.Tensor
    data_vs_prior: torch.Tensor
    log_likelihood: float
    class_probability: torch.Tensor
    labels: torch.Tensor
    map_class: torch.Tensor
    map_rotation_index: torch.Tensor
    map_shift_index: torch.Tensor
    map_shift: torch.Tensor
    max_weight: torch.Tensor
    n_significant: torch.Tensor


def class_em_iteration(data: Particles | torch.Tensor, volumes: torch.Tensor, sigma2: torch.Tensor,
                       rotations: torch.Tensor, shifts: torch.Tensor, class_prior: torch.Tensor | None = None, *,
                       tau2: torch.Tensor | None = None, tau2_fudge: float = 4.0,
                       ctf: CTFParams | torch.Tensor | None = None, pixel_size: float | None = None,
                       k_max: int | None = None, pad: int = 2, batch_size: int = 64, device=None,
                       mass: float = 0.999, max_significant: int = 1000, weight_floor: float = 1e-6,
                       modal: bool = False, pair_chunk: int = 2048, rotation_chunk: int | None = None,
                       work_size: int | None = None, cache_bytes: int = 1 << 30, minres_map: int = 0,
                       progress=None) -> ClassEMResult:
    """One Class3D E-step + M-step over all images (module docstring).

    data: :class:`Particles` (CTF and pixel size used, poses ignored) or real images ``(N, D, D)`` with
    ``ctf`` as in :func:`~cryolens.inference.em.em_iteration`. volumes: ``(K, D, D, D)`` real current
    maps; their dtype is the compute dtype. sigma2: ``(D//2+1,)``. rotations: ``(M, 3, 3)``. shifts:
    ``(T, 2)`` px (or ``(N, T, 2)``). class_prior: ``(K,)`` ``π_k`` (uniform when ``None``), or
    ``(N, K)`` per image (rows summing to 1; zeros allowed, e.g. a one-hot random first assignment).
    tau2: ``(K, D//2+1)`` prior power per class (default: :func:`projector_power_spectrum` of
    ``volumes``, at the working box). tau2_fudge: RELION's ``T``. k_max: highest shell of the likelihood. modal: hard
    assignment of the best (class, pose). work_size: even box ``d ≤ D`` (≥ ``2·k_max``) the iteration
    works in — images Fourier-cropped (:func:`fourier_crop_images`), maps resized
    (:func:`resize_volume`), as RELION's ``current_size``; the posterior is unchanged (the same
    frequencies, σ² scaled by ``(d/D)⁴``), the new maps hold no frequency above ``d/2`` and σ² is updated
    up to shell ``d/2`` (default ``D``: no cropping). cache_bytes: when the slice values of all classes ×
    rotations on the pixels inside ``k_max`` fit in this many bytes they are rendered once
    (:func:`slice_values`) instead of once per batch. progress: an optional tqdm bar, advanced by the
    images of each batch. minres_map: shells below it get no prior (RELION's ``--minres_map``; the
    M-step's regularisation is :func:`map_regularisation`).
    """
    dev = torch.device(device) if device is not None else volumes.device
    dt = volumes.dtype
    n_cls, full = volumes.shape[0], volumes.shape[-1]
    size = full if work_size is None else int(work_size)
    k_max = full // 2 if k_max is None else int(k_max)
    if size % 2 or size > full or k_max > size // 2:
        raise ValueError(f"work_size must be even, <= {full} and >= 2 k_max = {2 * k_max}; got {size}")
    ratio = size / full
    nsh = size // 2 + 1
    if isinstance(data, Particles):
        pixel_size = data.pixel_size if pixel_size is None else pixel_size
    px_work = None if pixel_size is None else pixel_size / ratio
    vols, s2, tau2, slicers = _working_maps(volumes, sigma2, tau2, size, pad, dev)
    rot = rotations.to(device=dev, dtype=dt)
    sh = shifts.to(device=dev, dtype=dt) * ratio
    log_prior = _log_priors(class_prior, n_cls, dev, dt)
    n_pix = used_pixels(size, k_max, dev).numel()
    itemsize = 16 if dt == torch.float64 else 8
    scorers = ([slice_values(sl, rot, size, k_max) for sl in slicers]
               if n_cls * rot.shape[0] * n_pix * itemsize <= cache_bytes else slicers)
    accs = [FourierAccumulator(size, pad, dev, dt) for _ in range(n_cls)]
    shells = shell_index_2d(size, device=dev)
    pixels_per_shell = shell_sum(torch.ones(size, size, device=dev, dtype=dt), shells, nsh)
    num = torch.zeros(nsh, device=dev, dtype=torch.float64)
    total_w = torch.zeros((), device=dev, dtype=torch.float64)
    class_mass = torch.zeros(n_cls, device=dev, dtype=torch.float64)
    out = {k: [] for k in ("idx", "lz", "p", "k", "r", "t", "ts", "w", "n")}

    for idx, images, c_b in _batches(data, ctf, batch_size):
        b = images.shape[0]
        y = fft2_centered(images.to(device=dev, dtype=dt))
        if size != full:
            y = fourier_crop_images(y, size)
            if isinstance(c_b, torch.Tensor):  # CTF images: the same frequencies, no rescaling
                lo = full // 2 - size // 2
                c_b = c_b[..., lo:lo + size, lo:lo + size]
        c = ctf_images(c_b, b, size, px_work, dev, dt)
        sh_b = sh[idx.to(dev)] if sh.dim() == 3 else sh
        lp_b = log_prior[idx.to(dev)] if log_prior.dim() == 2 else log_prior
        post = class_pose_posterior(y, scorers, rot, sh_b, s2, ctf=c, k_max=k_max, log_class_prior=lp_b,
                                    mass=mass, max_significant=1 if modal else max_significant,
                                    rotation_chunk=rotation_chunk)
        if modal:
            keep = post.rotation_index[:, :1] >= 0
            w_all = torch.ones_like(post.weight[:, :1])
            cls_i, rot_i, sh_i = post.class_index[:, :1], post.rotation_index[:, :1], post.shift_index[:, :1]
            p_cls = torch.nn.functional.one_hot(cls_i[:, 0], n_cls).to(dt)
        else:
            keep = (post.rotation_index >= 0) & (post.weight >= weight_floor * post.weight[:, :1])
            w_all = torch.where(keep, post.weight, torch.zeros_like(post.weight))
            w_all = w_all / w_all.sum(1, keepdim=True)
            cls_i, rot_i, sh_i = post.class_index, post.rotation_index, post.shift_index
            p_cls = post.class_probability
        class_mass += p_cls.double().sum(0)
        bi, ki = keep.nonzero(as_tuple=True)
        kk, r, t, w = cls_i[bi, ki], rot_i[bi, ki], sh_i[bi, ki], w_all[bi, ki]
        # every (image, shift) that occurs: C·Y' = C·phase_shift(Y, −t) and C², computed once each
        n_t = sh_b.shape[-2]
        pair_it, inv_it = torch.unique(bi * n_t + t, return_inverse=True)
        i_img = torch.div(pair_it, n_t, rounding_mode="floor")
        t_val = sh_b[i_img, pair_it % n_t] if sh_b.dim() == 3 else sh_b[pair_it % n_t]
        ci = torch.ones(i_img.shape[0], size, size, dtype=dt, device=dev) if c is None else c[i_img]
        cy = phase_shift(y[i_img], -t_val) * ci  # (U, d, d)
        c2 = ci * ci
        power = (y.abs().square() * w_all.sum(1)[:, None, None]).sum(0)
        for kc in range(n_cls):
            sel = kk == kc
            if not bool(sel.any()):
                continue
            rs, ws, us = r[sel], w[sel], inv_it[sel]
            used, inv = torch.unique(rs, return_inverse=True)
            s1 = torch.zeros(used.shape[0], size, size, dtype=y.dtype, device=dev)
            s2w = torch.zeros(used.shape[0], size, size, dtype=dt, device=dev)
            for s in range(0, rs.shape[0], pair_chunk):
                wc, u = ws[s:s + pair_chunk, None, None], us[s:s + pair_chunk]
                s1.index_add_(0, inv[s:s + pair_chunk], wc * cy[u])
                s2w.index_add_(0, inv[s:s + pair_chunk], wc * c2[u])
            _insert_aggregates(accs[kc], s1, s2w, rot[used])
            for s in range(0, used.shape[0], pair_chunk):
                p = slicers[kc](rot[used[s:s + pair_chunk]])
                power = power + (-2 * (s1[s:s + pair_chunk].conj() * p).real
                                 + s2w[s:s + pair_chunk] * p.abs().square()).sum(0)
        num += shell_sum(power, shells, nsh).double()
        total_w += w.sum().double()
        out["idx"].append(idx)
        out["lz"].append(post.log_evidence)
        out["p"].append(p_cls)
        out["k"].append(post.class_index[:, 0])
        out["r"].append(post.rotation_index[:, 0])
        out["t"].append(post.shift_index[:, 0])
        out["ts"].append((sh_b[post.shift_index[:, 0]] if sh_b.dim() == 2
                          else sh_b[torch.arange(b, device=dev), post.shift_index[:, 0]]) / ratio)
        out["w"].append(post.weight[:, 0])
        out["n"].append(keep.sum(1))
        if progress is not None:
            progress.update(b)

    order = torch.argsort(torch.cat(out["idx"]))
    cat = {k: torch.cat(v).to(dev)[order.to(dev)] for k, v in out.items() if k != "idx"}
    n_images = order.shape[0]
    log_lik = float(cat["lz"].double().sum() + n_images * log_normaliser(s2.double(), size, k_max))
    new_s2_work = (num / (total_w * pixels_per_shell.double()).clamp_min(1e-300)).to(dt)
    new_sigma2 = sigma2.to(device=dev, dtype=dt).clone()
    new_sigma2[:nsh] = new_s2_work / ratio ** 4
    new_vols, new_tau2, lam, dvp = _class_maps(accs, vols, s2, tau2, tau2_fudge, pad, minres_map, full)
    new_prior = (class_mass / max(n_images, 1)).to(torch.float64)
    return ClassEMResult(volumes=new_vols, class_prior=new_prior.cpu(), sigma2=new_sigma2, tau2=new_tau2,
                         regularisation=lam, data_vs_prior=dvp, log_likelihood=log_lik, class_probability=cat["p"],
                         labels=cat["p"].argmax(1), map_class=cat["k"], map_rotation_index=cat["r"],
                         map_shift_index=cat["t"], map_shift=cat["ts"], max_weight=cat["w"], n_significant=cat["n"])


def class_em_iteration_fixed_poses(data: Particles, volumes: torch.Tensor, sigma2: torch.Tensor,
                                   class_prior: torch.Tensor | None = None, *, tau2: torch.Tensor | None = None,
                                   tau2_fudge: float = 4.0, k_max: int | None = None, pad: int = 2,
                                   batch_size: int = 64, device=None, modal: bool = False, minres_map: int = 0,
                                   work_size: int | None = None, weight_floor: float = 1e-6,
                                   progress=None) -> ClassEMResult:
    """One Class3D E-step + M-step with every image at its given pose (RELION's ``--skip_align``).

    data: :class:`Particles` with ``rotations (N, 3, 3)`` (image → volume frame) and ``shifts (N, 2)`` px
    (``None``: centred) and CTFs. volumes, sigma2, class_prior, tau2, tau2_fudge, k_max, pad,
    minres_map, modal, work_size: as :func:`class_em_iteration` (``work_size``: the iteration runs on
    images and maps Fourier-cropped to that box, RELION's ``current_size``). weight_floor: an image is
    inserted into class ``k`` only where ``P(k | Y_i) ≥ weight_floor · max_k P(k | Y_i)`` (its class
    probabilities renormalised over the kept classes), as the searched version prunes poses. E-step: ``P(k | Y_i) = softmax_k(ℓ_ik + log π_k)``
    with ``ℓ_ik`` :func:`~cryolens.inference.likelihood.gaussian_log_likelihood` of image ``i`` (shift
    undone) against class ``k``'s slice at its rotation, shells ``≤ k_max``. M-step: each class inserts
    every image at its pose weighted by ``P(k | Y_i)``; ``σ²`` the posterior-weighted residual power;
    priors the mean class posterior. Returns a :class:`ClassEMResult` whose ``map_rotation_index`` is
    each image's own index (into ``data.rotations``), ``map_shift`` its given shift and ``max_weight`` its
    largest class probability.
    """
    if data.rotations is None:
        raise InputError(f"{data.name}: no poses (rlnAngleRot/Tilt/Psi); classification "
                         "with fixed poses (skip_align) needs them")
    dev = torch.device(device) if device is not None else volumes.device
    dt = volumes.dtype
    n_cls, full = volumes.shape[0], volumes.shape[-1]
    size = full if work_size is None else int(work_size)
    k_max = full // 2 if k_max is None else int(k_max)
    if size % 2 or size > full or k_max > size // 2:
        raise ValueError(f"work_size must be even, <= {full} and >= 2 k_max = {2 * k_max}; got {size}")
    ratio = size / full
    nsh = size // 2 + 1
    px_work = data.pixel_size / ratio
    vols, s2, tau2, slicers = _working_maps(volumes, sigma2, tau2, size, pad, dev)
    log_prior = _log_priors(class_prior, n_cls, dev, dt)
    accs = [FourierAccumulator(size, pad, dev, dt) for _ in range(n_cls)]
    shells = shell_index_2d(size, device=dev)
    pixels_per_shell = shell_sum(torch.ones(size, size, device=dev, dtype=dt), shells, nsh)
    num = torch.zeros(nsh, device=dev, dtype=torch.float64)
    class_mass = torch.zeros(n_cls, device=dev, dtype=torch.float64)
    out = {k: [] for k in ("idx", "lz", "p")}
    for idx, images, c_b in _batches(data, None, batch_size):
        b = images.shape[0]
        t = torch.zeros(b, 2) if data.shifts is None else data.shifts[idx]
        y = fft2_centered(images.to(device=dev, dtype=dt))
        if size != full:
            y = fourier_crop_images(y, size)
        if isinstance(c_b, torch.Tensor) and size != full:  # CTF images: the same frequencies, no rescaling
            lo = full // 2 - size // 2
            c_b = c_b[..., lo:lo + size, lo:lo + size]
        y = phase_shift(y, -t.to(device=dev, dtype=dt) * ratio)
        c = ctf_images(c_b, b, size, px_work, dev, dt)
        rot = data.rotations[idx].to(device=dev, dtype=dt)
        preds = torch.stack([sl(rot) for sl in slicers], 1)  # (B, K, d, d)
        lp = gaussian_log_likelihood(y, preds, s2, k_max, c) + (log_prior[idx.to(dev)] if log_prior.dim() == 2
                                                                 else log_prior)
        lz = torch.logsumexp(lp, 1)
        p = torch.exp(lp - lz[:, None])
        if modal:
            p = torch.nn.functional.one_hot(p.argmax(1), n_cls).to(dt)
        class_mass += p.double().sum(0)
        w = torch.where(p >= weight_floor * p.max(1, keepdim=True).values, p, torch.zeros_like(p))
        w = w / w.sum(1, keepdim=True)
        kept = w > 0
        if int(kept.sum()) > 0.75 * kept.numel():  # mostly soft: one shared insertion geometry for all classes
            FourierAccumulator.add_shared(accs, y, rot, c, w)
        else:  # mostly one class per image: each class inserts only its own images
            for kc in range(n_cls):
                sel = kept[:, kc].nonzero(as_tuple=True)[0]
                if sel.numel() > 0:
                    accs[kc].add(y[sel], rot[sel], None if c is None else c[sel], scale=w[sel, kc])
        model = preds if c is None else preds * c[:, None]
        power = ((y[:, None] - model).abs().square() * w[:, :, None, None]).sum((0, 1))
        num += shell_sum(power, shells, nsh).double()
        out["idx"].append(idx)
        out["lz"].append(lz)
        out["p"].append(p)
        if progress is not None:
            progress.update(b)
    order = torch.argsort(torch.cat(out["idx"]))
    cat = {k: torch.cat(v).to(dev)[order.to(dev)] for k, v in out.items() if k != "idx"}
    n_images = order.shape[0]
    log_lik = float(cat["lz"].double().sum() + n_images * log_normaliser(s2.double(), size, k_max))
    new_sigma2 = sigma2.to(device=dev, dtype=dt).clone()
    new_sigma2[:nsh] = (num / (n_images * pixels_per_shell.double()).clamp_min(1e-300)).to(dt) / ratio ** 4
    new_vols, new_tau2, lam, dvp = _class_maps(accs, vols, s2, tau2, tau2_fudge, pad, minres_map, full)
    probs = cat["p"]
    all_idx = torch.arange(n_images, device=dev)
    shifts = torch.zeros(n_images, 2, device=dev, dtype=dt) if data.shifts is None else data.shifts.to(dev, dt)
    return ClassEMResult(volumes=new_vols, class_prior=(class_mass / max(n_images, 1)).cpu(), sigma2=new_sigma2,
                         tau2=new_tau2, regularisation=lam, data_vs_prior=dvp, log_likelihood=log_lik,
                         class_probability=probs, labels=probs.argmax(1), map_class=probs.argmax(1),
                         map_rotation_index=all_idx, map_shift_index=torch.zeros_like(all_idx), map_shift=shifts,
                         max_weight=probs.max(1).values, n_significant=(probs > 1e-6).sum(1))

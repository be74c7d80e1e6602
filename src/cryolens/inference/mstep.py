"""The M-step's sufficient statistics: weighted insertion of (image, pose) pairs and the per-shell noise power.

Every kept pair of the E-step (:mod:`~cryolens.inference.estep`) with weight ``w`` adds, shift undone
(``Y' = phase_shift(Y, −t)``), ``w · C · Y'`` and ``w · C²`` along its central slice ``R`` into a
:class:`~cryolens.inference.reconstruct.FourierAccumulator`; the map is then ``data / (weight + λ)``
with ``λ`` from the prior (:mod:`~cryolens.inference.prior`). Insertion is linear, so per batch the
pairs are first summed per rotation (``S1_m = Σ w C Y'``, ``S2_m = Σ w C²``, :func:`rotation_sums`)
and each used rotation is inserted once (:func:`insert_aggregates`, equal to pair-by-pair
:func:`insert_weighted`). This is RELION's M-step; for the voxel grid with trilinear interpolation it
is the exact maximiser only in the nearest-neighbour limit (:func:`exact_m_step` solves it exactly).

**Noise** (one estimator, :func:`noise_power`): ``σ²(k)`` = the weighted mean, over images, pairs
and the pixels of shell ``k``, of the residual power ``|Y' − C P|²`` under the E-step's reference
``P`` — the same sums give it with one slice per used rotation (:func:`expected_residual_power`).
RELION weighs by the posterior; auto-refine's modal variant weighs each image's MAP pose by 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..imaging.fft import fft2_centered
from ..imaging.grids import freq_grid_2d, shell_index_2d, shell_sum
from ..imaging.shift import phase_shift
from ..imaging.slice import prepare_volume_ft
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .distributed import all_reduce_sum, is_distributed
from .likelihood import SliceFn, used_pixels, volume_slicer
from .reconstruct import FourierAccumulator


def noise_power(shell_power: torch.Tensor, weight, pixels_per_shell: torch.Tensor) -> torch.Tensor:
    """The σ² estimator ``(D//2+1,)``: summed residual power per shell over the summed weight × pixels."""
    return shell_power / (weight * pixels_per_shell).clamp_min(1e-300)


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


class NoiseStats:
    """Running sums of :func:`noise_power` for a box ``size``: per-shell residual power (float64) and weight."""

    def __init__(self, size: int, device=None, dtype=torch.float32):
        self.shells = shell_index_2d(size, device=device)
        self.n_shells = size // 2 + 1
        self.pixels = shell_sum(torch.ones(size, size, device=device, dtype=dtype), self.shells, self.n_shells).double()
        self.power = torch.zeros(self.n_shells, device=device, dtype=torch.float64)
        self.weight = torch.zeros((), device=device, dtype=torch.float64)

    def add(self, power: torch.Tensor, weight) -> None:
        """Add a ``(D, D)`` residual power image of total weight ``weight`` (images or summed pair weights)."""
        self.power += shell_sum(power, self.shells, self.n_shells).double()
        self.weight = self.weight + weight

    def all_reduce(self) -> None:
        """Sum the statistics over the ranks of a process group, in place (no-op in one process)."""
        if is_distributed():
            self.weight = torch.as_tensor(self.weight, dtype=torch.float64, device=self.power.device).clone()
            all_reduce_sum(self.power, self.weight)

    def estimate(self) -> torch.Tensor:
        """``(D//2+1,)`` float64 σ²."""
        return noise_power(self.power, self.weight, self.pixels)


def insert_weighted(accumulator: FourierAccumulator, images_ft: torch.Tensor, ctf: torch.Tensor | None,
                    image_index: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor,
                    weights: torch.Tensor, chunk: int = 4096) -> None:
    """Insert ``P`` weighted (image, pose) pairs one by one (the reference for :func:`rotation_sums`).

    images_ft: ``(B, D, D)`` complex centered transforms (shift *not* undone). ctf: ``(B, D, D)`` real or
    ``None``. image_index: ``(P,)`` int64 into the batch; rotations: ``(P, 3, 3)``; shifts: ``(P, 2)`` px
    (particle centre relative to the image centre); weights: ``(P,)`` posterior weights. Each pair adds
    ``w · C · phase_shift(Y, −t)`` and ``w · C²`` along ``R`` (:meth:`FourierAccumulator.add`).
    """
    for s in range(0, image_index.shape[0], chunk):
        i = image_index[s:s + chunk]
        y = phase_shift(images_ft[i], -shifts[s:s + chunk])
        accumulator.add(y, rotations[s:s + chunk], None if ctf is None else ctf[i], scale=weights[s:s + chunk])


def insert_aggregates(acc: FourierAccumulator, s1: torch.Tensor, s2: torch.Tensor, rotations: torch.Tensor) -> None:
    """Insert per-rotation sums ``S1 = Σ w C Y'`` (data) and ``S2 = Σ w C²`` (weight) along
    ``rotations``: by linearity the same as inserting every pair (:func:`insert_weighted`), written with
    :meth:`FourierAccumulator.add` as images ``S1/√S2`` with CTF ``√S2`` (0 where ``S2 = 0``)."""
    root = s2.clamp_min(0).sqrt()
    img = torch.where(root > 0, s1 / root.clamp_min(torch.finfo(root.dtype).tiny), torch.zeros_like(s1))
    acc.add(img, rotations, root)


def shifted_sources(y: torch.Tensor, c: torch.Tensor | None, image: torch.Tensor, shift_index: torch.Tensor,
                    shifts: torch.Tensor, multiply: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (image, shift) the pairs use, computed once: ``(C·Y' (U, D, D), C² (U, D, D), source (P,))``
    with ``Y' = phase_shift(Y, −t)``; pairs ``image (P,)`` into the batch, ``shift_index (P,)`` into
    ``shifts`` ``(T, 2)`` or ``(B, T, 2)`` px; ``source`` maps each pair to its row. ``multiply=False``:
    ``(Y', C, source)``, for sums formed as ``(w C) Y'`` (:func:`rotation_sums`)."""
    n_t = shifts.shape[-2]
    pair_it, inv = torch.unique(image * n_t + shift_index, return_inverse=True)
    i_img = torch.div(pair_it, n_t, rounding_mode="floor")
    t_val = shifts[i_img, pair_it % n_t] if shifts.dim() == 3 else shifts[pair_it % n_t]
    size = y.shape[-1]
    ci = torch.ones(i_img.shape[0], size, size, dtype=y.real.dtype, device=y.device) if c is None else c[i_img]
    yu = phase_shift(y[i_img], -t_val)
    return (yu * ci, ci * ci, inv) if multiply else (yu, ci, inv)


def rotation_sums(cy: torch.Tensor, c2: torch.Tensor, source: torch.Tensor, rotation: torch.Tensor,
                  weight: torch.Tensor, chunk: int = 2048,
                  multiplied: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-rotation sums of weighted pairs: ``(used (U,), S1 (U, D, D) = Σ w C Y', S2 (U, D, D) = Σ w C²)``
    for pairs ``source (P,)`` into the rows of :func:`shifted_sources` (``multiplied``: its default
    form; else ``cy, c2`` are ``Y', C`` and the terms are formed as ``(w C) Y'``, ``(w C) C``),
    ``rotation (P,)`` grid indices and ``weight (P,)``; ``used`` the distinct rotations, ascending."""
    used, inv = torch.unique(rotation, return_inverse=True)
    s1 = torch.zeros(used.shape[0], *cy.shape[1:], dtype=cy.dtype, device=cy.device)
    s2 = torch.zeros(used.shape[0], *c2.shape[1:], dtype=c2.dtype, device=c2.device)
    for s in range(0, rotation.shape[0], chunk):
        wc, u = weight[s:s + chunk, None, None], source[s:s + chunk]
        if not multiplied:
            wc = wc * c2[u]
        s1.index_add_(0, inv[s:s + chunk], wc * cy[u])
        s2.index_add_(0, inv[s:s + chunk], wc * c2[u])
    return used, s1, s2


def expected_residual_power(s1: torch.Tensor, s2: torch.Tensor, slicer: SliceFn, rotations: torch.Tensor,
                            chunk: int | None = 2048, start: torch.Tensor | None = None) -> torch.Tensor:
    """``(D, D)`` ``Σ_m [−2 Re(conj(S1_m) P_m) + S2_m |P_m|²]`` with ``P_m`` the reference's slice along
    ``rotations (U, 3, 3)``: with ``Σ w |Y|²`` added, the posterior-weighted ``Σ w |Y' − C P|²``.
    ``chunk``: slices rendered together (``None``: all at once); ``start``: a power image to add to."""
    step = rotations.shape[0] if chunk is None else chunk
    power = torch.zeros(s1.shape[1:], dtype=s2.dtype, device=s2.device) if start is None else start
    for s in range(0, rotations.shape[0], max(1, step)):
        p = slicer(rotations[s:s + step])
        power = power + (-2 * (s1[s:s + step].conj() * p).real + s2[s:s + step] * p.abs().square()).sum(0)
    return power


def class_sums(y: torch.Tensor, c: torch.Tensor | None, pairs: tuple[torch.Tensor, ...], image_weight: torch.Tensor,
               shifts: torch.Tensor, rotations: torch.Tensor, slicers: list[SliceFn],
               on_sums: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None],
               chunk: int | None = 2048, ctf_first: bool = False) -> torch.Tensor:
    """The M-step statistics of one batch's weighted pairs over ``K`` classes.

    pairs: ``(image, class, rotation index, shift index, weight)``, each ``(P,)``; image_weight: ``(B,)``
    each image's summed pair weight; shifts: the E-step's
    ``(T, 2)`` or ``(B, T, 2)`` px; rotations: ``(M, 3, 3)`` the grid. For each class with pairs,
    ``on_sums(k, used, S1, S2)`` receives its per-rotation sums (to insert them). Returns the
    ``(D, D)`` posterior-weighted residual power ``Σ w |Y' − C P_k|²`` (for :class:`NoiseStats`).
    ``chunk``: pairs and slices processed together (``None``: all); ``ctf_first``: terms formed as
    ``(w C) Y'`` rather than ``w (C Y')`` (the same sums up to rounding; ab initio's and the plain EM
    iteration's arithmetic).
    """
    image, cls, rot, sh, w = pairs
    cy, c2, src = shifted_sources(y, c, image, sh, shifts, multiply=not ctf_first)
    power = (y.abs().square() * image_weight[:, None, None]).sum(0)
    for kc, slicer in enumerate(slicers):
        sel = cls == kc
        if not bool(sel.any()):
            continue
        used, s1, s2 = rotation_sums(cy, c2, src[sel], rot[sel], w[sel], chunk or rot.shape[0], not ctf_first)
        on_sums(kc, used, s1, s2)
        power = expected_residual_power(s1, s2, slicer, rotations[used], chunk, start=power)
    return power


def exact_m_step(volume: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, rotations: torch.Tensor,
                 pixel_weight: torch.Tensor, pad: int = 2, iterations: int = 30, tol: float = 1e-8,
                 chunk: int = 512) -> torch.Tensor:
    """The exact volume M-step for the voxel-grid model: minimise over real ``(D, D, D)`` volumes ``V``

        f(V) = Σ_m Σ_f ω_f [S2_m(f) |A_m V(f)|² − 2 Re(conj(S1_m(f)) A_m V(f))]

    (the negative expected complete-data log-likelihood up to a constant), with ``A_m V`` the central
    slice ``R_m`` of ``prepare_volume_ft(V, pad)`` — the same projector the E-step scores with — by
    conjugate gradients started at ``volume`` (gradients by autograd; ``f`` is quadratic, so
    ``H p = ∇f(p) − ∇f(0)``). CG decreases ``f`` at every step, so even a truncated solve is a
    generalised-EM step. s1: ``(M, D, D)`` complex ``Σ w C Y'``; s2: ``(M, D, D)`` ``Σ w C²``; rotations:
    ``(M, 3, 3)``; pixel_weight: ``(D, D)`` ``ω = 1/(2σ²)`` inside ``k_max``, 0 outside. Memory: the
    ``M`` slices and their gradients; for small problems (tests, low resolution)."""
    size = volume.shape[-1]
    s1w, s2w = s1 * pixel_weight, s2 * pixel_weight

    def grad(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        slicer = volume_slicer(prepare_volume_ft(v, pad), size)
        total = v.new_zeros(())
        for a in range(0, rotations.shape[0], chunk):
            p = slicer(rotations[a:a + chunk])
            total = total + (s2w[a:a + chunk] * p.abs().square() - 2 * (s1w[a:a + chunk].conj() * p).real).sum()
        (g,) = torch.autograd.grad(total, v)
        return g.detach()

    with torch.enable_grad():
        return _conjugate_gradients(grad, volume, iterations, tol)


def _conjugate_gradients(grad, start: torch.Tensor, iterations: int, tol: float) -> torch.Tensor:
    """CG on the quadratic whose gradient is ``grad`` from ``start`` (:func:`exact_m_step`)."""
    g0 = grad(torch.zeros_like(start))
    x = start.detach().clone()
    r = -grad(x)
    p = r.clone()
    rr = (r * r).sum()
    rr0 = rr
    for _ in range(iterations):
        if rr <= tol * tol * rr0 or rr == 0:
            break
        hp = grad(p) - g0
        php = (p * hp).sum()
        if php <= 0:
            break
        alpha = rr / php
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = (r * r).sum()
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class InsertPixels:
    """The pixels a restricted M-step inserts: shells ``≤ k_max`` (RELION's ``current_size``: the map
    holds no data beyond the E-step's window) on the ``kx ≥ 0`` half-columns, with the multiplicities of
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


def insert_pairs_on_pixels(acc: FourierAccumulator, y: torch.Tensor, c: torch.Tensor | None, image: torch.Tensor,
                           rotation: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                           rotation_of: Callable[[torch.Tensor], torch.Tensor], where: InsertPixels
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert weighted pairs (``image``, grid ``rotation``, ``shift (P, 2)`` px, ``weight``) of a batch
    ``y (B, D, D)`` summed per distinct grid rotation on the pixels ``where`` only; ``rotation_of(used)``
    gives the ``(U, 3, 3)`` matrices of the used grid indices. Returns them and the per-rotation sums
    ``S1 = Σ w C Y'`` ``(U, P)`` complex and ``S2 = Σ w C²`` ``(U, P)`` (for :func:`weighted_residual_power`).

    ``C Y'`` (the shift undone, ``Y' = Y · exp(+2πi f·t)``, f cycles/px, t px) depends on the pair's image and
    shift only, and a fine pass holds many rotations per (image, shift): it is formed once per distinct
    (image, shift) and the weights applied as one sparse ``(U, combinations)`` product — no per-pair copy of
    the image (at ~450 pairs per image the sums take 0.1× the time of the per-pair form, the whole insertion
    0.62×: ``benchmarks/bench_pair_insertion.py``)."""
    px = where.pixels
    rdt = y.real.dtype
    used, inv = torch.unique(rotation, return_inverse=True)
    yp = y.flatten(1)[:, px]  # (B, P)
    cp = torch.ones_like(yp.real) if c is None else c.flatten(1)[:, px]
    shifts, shift_of = torch.unique(shift.to(where.freqs.dtype), dim=0, return_inverse=True)
    n_s = shifts.shape[0]
    combos, combo_of = torch.unique(image * n_s + shift_of, return_inverse=True)  # distinct (image, shift)
    ci, si = torch.div(combos, n_s, rounding_mode="floor"), combos % n_s
    phase = 2 * math.pi * (shifts[si] @ where.freqs.T)
    z = yp[ci] * cp[ci] * torch.polar(torch.ones_like(phase), phase)  # (combinations, P)
    u, w = used.shape[0], weight.to(rdt)
    by_combo = torch.sparse_coo_tensor(torch.stack([inv, combo_of]), w, (u, combos.shape[0]), check_invariants=False)
    s1 = torch.sparse.mm(by_combo, torch.view_as_real(z).reshape(z.shape[0], -1))  # duplicates are summed
    s1 = torch.view_as_complex(s1.reshape(u, -1, 2).contiguous())
    by_image = torch.sparse_coo_tensor(torch.stack([inv, image]), w, (u, y.shape[0]), check_invariants=False)
    s2 = torch.sparse.mm(by_image, cp * cp)
    rots = rotation_of(used)
    acc.add_points(s1, s2, rots, where.freqs, where.mult)
    return rots, s1, s2


def weighted_residual_power(y: torch.Tensor, rotations: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
                            slice_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], where: InsertPixels,
                            chunk: int = 2048) -> torch.Tensor:
    """``(D, D)`` float64: the posterior-weighted residual power of a batch ``y (B, D, D)``,
    ``Σ_pairs w |Y' − C·P_R|²`` (RELION's σ² statistic; weights summing to 1 per image), on the pixels of
    ``where`` — each counted with its Friedel partner, ``2 · mult`` — and 0 elsewhere. From the per-rotation
    sums of :func:`insert_pairs_on_pixels`: ``Σ_i |Y_i|² − 2 Re Σ_m conj(P_m) S1_m + Σ_m |P_m|² S2_m``.
    slice_at: ``(rotations (U', 3, 3), pixels (P,)) → (U', P)`` the reference's slice values."""
    px = where.pixels
    total = y.flatten(1)[:, px].abs().double().square().sum(0)
    for a in range(0, rotations.shape[0], chunk):
        p = slice_at(rotations[a:a + chunk], px)
        total += (p.abs().square() * s2[a:a + chunk] - 2 * (p.conj() * s1[a:a + chunk]).real).double().sum(0)
    out = torch.zeros(y.shape[-1] * y.shape[-1], dtype=torch.float64, device=y.device)
    out[px] = 2 * where.mult.double() * total
    return out.reshape(y.shape[-2:])

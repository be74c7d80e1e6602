"""The Gaussian image likelihood in Fourier space, per-shell noise, and its fast expanded form.

Model (review Eq. 9): ``Y = C · shift_t(P_R) + N`` with ``Y`` the centered transform of an image,
``P_R`` the central slice of the volume's transform for rotation ``R``, ``C`` the image's CTF,
``shift_t`` the phase ramp ``exp(−2πi k·t)`` (:mod:`cryolens.imaging.shift`), and ``N`` stationary
Gaussian noise whose power depends only on the Fourier shell ``k = round(|f|·D)``.

**Normalisation.** ``σ²(k)`` (shape ``(D//2 + 1,)``) is the noise *power* of one Fourier component
in shell ``k``, ``E|N_f|²``, for the unnormalised centered FFT of :mod:`cryolens.imaging.fft`
(real-space white noise of variance ``s²`` per pixel has ``σ²(k) = s² · D²``). The log-likelihood is

    log p(Y | R, t) = − Σ_{f : shell(f) ≤ k_max}  |Y_f − C_f · ramp_t(f) · P_R(f)|² / (2 σ²(shell(f)))  + const

summed over the **full** ``D × D`` plane. For a real image the components ``f`` and ``−f`` are
conjugate, so the full-plane sum counts each independent complex pair twice, which is exactly the
Gaussian density of the pair (real and imaginary parts each of variance ``σ²/2``); by Parseval this
equals ``−Σ_pixels r² / (2 s²)`` for white noise — the real-space Gaussian log-likelihood, not a
tempered one (tested). RELION writes the same thing as a half-plane sum with a per-part variance
``σ²/2``. Shells beyond ``k_max`` (and the corner frequencies beyond Nyquist, shells ``> D//2``,
where ``σ²`` is not defined) are left out: infinite noise there.

**Dropped constant.** ``const`` (:func:`log_normaliser`: ``−Σ_{f ≤ k_max} ½ log(π σ²(shell(f)))``,
the Gaussian normaliser counted per pair as above, with a ``½ log 2`` correction for the few real
self-conjugate components) depends on neither the pose nor the volume, so it cancels from posterior
weights over poses and from argmax pose searches; it matters only when comparing different
``σ²`` or ``k_max``, where the caller must add it (:func:`log_normaliser`). Everything else,
including ``|Y|²``, is kept, so the returned values are the log-likelihood up to that constant.

**Expanded form** (:func:`prepare_image_terms`, :func:`log_likelihood_table`). With ``w = 1/(2σ²)``:

    −Σ w|Y − C·ramp_t·P|²  =  −Σ w|Y|²  +  Σ 2wC·Re(conj(Y·conj(ramp_t)) · P)  −  Σ wC²|P|²

The shift moves onto the image (``|ramp| = 1``: ``|Y − C ramp P| = |Y conj(ramp) − C P|``), so for
``B`` images × ``T`` shifts × ``M`` slices the middle term is one real matrix product
``(B·T, 2N_p) @ (2N_p, M)`` and the last one ``(B, N_p) @ (N_p, M)``, with ``N_p`` the number of
pixels with shell ≤ ``k_max``. In float32 the expansion loses absolute precision
``≈ 1e-7 · Σ w(|Y|² + C²|P|²)`` by cancellation; pass float64 / complex128 tensors where
posterior weights must be exact at high signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..imaging.ctf import CTFParams, ctf_2d
from ..imaging.fft import abs2, fft2_centered
from ..imaging.grids import freq_grid_2d, shell_index_2d, shell_sum
from ..imaging.slice import extract_from_sampling_volume, extract_points_from_sampling_volume, sampling_volume

SliceFn = Callable[[torch.Tensor], torch.Tensor]
"""``slices(rotations (M, 3, 3)) -> (M, D, D)`` complex central slices, centered layout."""


def _check_sigma2(sigma2: torch.Tensor, size: int) -> torch.Tensor:
    if sigma2.dim() != 1 or sigma2.shape[0] != size // 2 + 1:
        raise ValueError(f"sigma2 must have shape (D//2+1,) = ({size // 2 + 1},), got {tuple(sigma2.shape)}")
    return sigma2


def _k_max(k_max: int | None, size: int) -> int:
    k = size // 2 if k_max is None else int(k_max)
    if not 0 <= k <= size // 2:
        raise ValueError(f"k_max must be in [0, D//2 = {size // 2}], got {k_max}")
    return k


def shell_weights(sigma2: torch.Tensor, size: int, k_max: int | None = None) -> torch.Tensor:
    """``(D, D)`` per-pixel weights ``1 / (2 σ²(shell))`` for shells ``≤ k_max`` (default ``D//2``),
    0 elsewhere (including the corners beyond Nyquist). ``sigma2: (D//2+1,)`` noise power per
    Fourier component (module docstring); on ``sigma2``'s device and real dtype."""
    _check_sigma2(sigma2, size)
    k = _k_max(k_max, size)
    shells = shell_index_2d(size, device=sigma2.device)
    inside = shells <= k
    w = torch.zeros((size, size), dtype=sigma2.dtype, device=sigma2.device)
    w[inside] = 0.5 / sigma2[shells[inside]]
    return w


def _self_conjugate(size: int, device) -> torch.Tensor:
    """``(D, D)`` bool: the pixels equal to their own Friedel partner (frequencies 0 and −½ per axis)."""
    i = torch.arange(size, device=device)
    on = (i == 0) | (i == size // 2)
    return on[:, None] & on[None, :]


def log_normaliser(sigma2: torch.Tensor, size: int, k_max: int | None = None) -> torch.Tensor:
    """The constant the log-likelihoods here leave out (scalar tensor), so that ``log-likelihood +
    log_normaliser`` is the exact Gaussian log-density of the independent real coordinates of ``Y``
    inside ``k_max`` (Re and Im of one member of each conjugate pair, variance ``σ²/2`` each; the real
    self-conjugate components, variance ``σ²``): ``−Σ_{f ≤ k_max} ½ log(π σ²(shell(f)))`` minus
    ``½ log 2`` per self-conjugate pixel. Add it only to compare across different ``σ²`` or ``k_max``."""
    _check_sigma2(sigma2, size)
    k = _k_max(k_max, size)
    shells = shell_index_2d(size, device=sigma2.device)
    inside = shells <= k
    n_self = float((_self_conjugate(size, sigma2.device) & inside).sum())
    return -0.5 * torch.log(math.pi * sigma2[shells[inside]]).sum() - 0.5 * math.log(2.0) * n_self


def ctf_images(ctf: torch.Tensor | CTFParams | None, n: int, size: int, pixel_size: float | None,
               device, dtype) -> torch.Tensor | None:
    """CTF as ``(n, D, D)`` real images (or ``None``): a tensor ``(n, D, D)`` / ``(D, D)`` is used
    as given; :class:`CTFParams` are evaluated with :func:`~cryolens.imaging.ctf.ctf_2d` (needs
    ``pixel_size`` Å/px)."""
    if ctf is None:
        return None
    if isinstance(ctf, CTFParams):
        if pixel_size is None:
            raise ValueError("pixel_size (Å/px) is needed to evaluate CTFParams")
        c = ctf_2d(ctf, size, pixel_size, device=device, dtype=dtype)
    else:
        c = ctf.to(device=device, dtype=dtype)
    if c.dim() == 2:
        c = c.expand(n, size, size)
    if c.shape != (n, size, size):
        raise ValueError(f"ctf must be (N, D, D) = ({n}, {size}, {size}), got {tuple(c.shape)}")
    return c


def gaussian_log_likelihood(images_ft: torch.Tensor, predictions: torch.Tensor, sigma2: torch.Tensor,
                            k_max: int | None = None, ctf: torch.Tensor | None = None) -> torch.Tensor:
    """Direct form ``−Σ_{shell ≤ k_max} |Y − C·P|² / (2σ²(shell))`` (module docstring).

    images_ft: ``(B, D, D)`` complex, centered. predictions: ``(B, D, D)`` (one per image) or
    ``(B, M, D, D)`` (``M`` candidates per image), complex, already shifted, *without* the CTF.
    sigma2: ``(D//2+1,)`` noise power per Fourier component. ctf: ``(B, D, D)`` real or ``None``.
    Returns ``(B,)`` or ``(B, M)`` in the images' real dtype.
    """
    size = images_ft.shape[-1]
    w = shell_weights(sigma2.to(device=images_ft.device, dtype=images_ft.real.dtype), size, k_max)
    per_candidate = predictions.dim() == 4
    y = images_ft[:, None] if per_candidate else images_ft
    p = predictions.to(images_ft.dtype)
    if ctf is not None:
        c = ctf.to(device=images_ft.device, dtype=images_ft.real.dtype)
        p = p * (c[:, None] if per_candidate else c)
    return -(w * abs2(y - p)).sum((-2, -1))


def estimate_noise_spectrum(residuals: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-shell noise power ``σ²(k) = mean |R_f|²`` over the images and the pixels of shell ``k``.

    residuals: ``(N, D, D)`` complex centered transforms ``Y − C·P`` — or real-space residual
    images, which are transformed first. weights: optional ``(N,)`` (or ``(N, D, D)``) non-negative
    weights, e.g. posterior weights in an EM M-step; the mean is weighted. Returns ``(D//2+1,)`` in
    the residuals' real dtype: the maximum-likelihood ``σ²`` of the model in the module docstring
    (for white real-space noise of variance ``s²``, ``s²·D²`` in every shell). A shell with no weight
    gets 0.
    """
    r = residuals if residuals.is_complex() else fft2_centered(residuals)
    size = r.shape[-1]
    power = r.abs().square()
    if weights is None:
        weights = torch.ones(r.shape[0], dtype=power.dtype, device=power.device)
    wt = weights.to(device=power.device, dtype=power.dtype)
    if wt.dim() == 1:
        wt = wt[:, None, None].expand_as(power)
    shells = shell_index_2d(size, device=power.device)
    num = shell_sum((wt * power).sum(0), shells, size // 2 + 1)
    den = shell_sum(wt.sum(0), shells, size // 2 + 1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


class VolumeSlicer:
    """A :data:`SliceFn` for an oversampled volume transform ``(Dp, Dp, Dp)`` from
    :func:`~cryolens.imaging.slice.prepare_volume_ft`: builds the sampling volume once, then
    ``slicer(R)`` = :func:`~cryolens.imaging.slice.extract_from_sampling_volume` ``(…, size,
    hermitian=hermitian)`` (``hermitian``: the transform of a real volume), and
    ``slicer.at_pixels(R, pixels)`` ``(M, P)`` the same values on the flat ``pixels`` only (see
    :func:`slice_values_at`)."""

    def __init__(self, volume_ft: torch.Tensor, size: int, hermitian: bool = True):
        self.sv, self.size, self.hermitian = sampling_volume(volume_ft), int(size), hermitian

    def __call__(self, rotations: torch.Tensor) -> torch.Tensor:
        return extract_from_sampling_volume(self.sv, rotations.to(device=self.sv.device), self.size,
                                            hermitian=self.hermitian)

    def at_pixels(self, rotations: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        return extract_points_from_sampling_volume(self.sv, rotations.to(device=self.sv.device), self.size, pixels)


def volume_slicer(volume_ft: torch.Tensor, size: int, hermitian: bool = True) -> VolumeSlicer:
    """:class:`VolumeSlicer` of ``volume_ft`` for ``size``-px slices."""
    return VolumeSlicer(volume_ft, size, hermitian)


def slice_values_at(slicer: SliceFn, rotations: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``(M, P)`` complex values of the slices of ``rotations (M, 3, 3)`` on the flat ``pixels`` — by
    interpolating only those pixels when the slicer can (``at_pixels``, e.g. :class:`VolumeSlicer`),
    else from its full slices."""
    if hasattr(slicer, "at_pixels"):
        return slicer.at_pixels(rotations, pixels)
    return slicer(rotations).flatten(-2)[:, pixels]


def as_slicer(slices: SliceFn | torch.Tensor, size: int) -> SliceFn:
    """A complex volume transform ``(Dp, Dp, Dp)`` → :func:`volume_slicer`; a callable is returned as
    is. (A real Hartley volume needs a callable that returns the complex slices
    ``F(k) = ½(H(k) + H(−k)) − ½i(H(k) − H(−k))``: the shifts are phase ramps on Fourier values.)"""
    if callable(slices):
        return slices
    if isinstance(slices, torch.Tensor) and slices.dim() == 3 and slices.is_complex():
        return volume_slicer(slices, size)
    raise ValueError("slices must be a callable rotations (M, 3, 3) -> (M, D, D) complex, or a complex "
                     "(Dp, Dp, Dp) volume transform")


def used_pixels(size: int, k_max: int | None = None, device=None) -> torch.Tensor:
    """``(N_p,)`` int64 flat indices (into ``D·D``, centered layout) of the pixels with shell ≤ ``k_max``
    (default ``D//2``): the pixels the likelihood sums over, in the order of :class:`ImageTerms`."""
    return torch.nonzero(shell_index_2d(size, device=device).reshape(-1) <= _k_max(k_max, size)).reshape(-1)


def half_plane_pixels(size: int, k_max: int | None = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The used pixels (shell ≤ ``k_max``) with flat index ≤ their Friedel partner's ``−f``, and each
    one's multiplicity ``(N_h,)`` real (2, or 1 for a pixel that is its own partner). For real images
    and maps ``Y(−f) = conj Y(f)`` and ``P(−f) = conj P(f)``, so a full-plane sum of
    ``w |Y − C·ramp·P|²`` equals the multiplicity-weighted sum over these pixels (the shell set is
    closed under ``f → −f``): the half-plane form of the likelihood, at half the cost."""
    flat = used_pixels(size, k_max, device)
    iy, ix = torch.div(flat, size, rounding_mode="floor"), flat % size
    partner = ((size - iy) % size) * size + (size - ix) % size
    keep = flat <= partner
    return flat[keep], torch.where(flat[keep] == partner[keep], 1.0, 2.0)


@dataclass
class ImageTerms:
    """Per-image precomputations of the expanded likelihood for ``B`` images × ``T`` shifts.

    pixels: ``(N_p,)`` flat indices (into ``D·D``) of the pixels with shell ≤ ``k_max``.
    cross: ``(B, T, 2N_p)`` real, ``2wC·[Re, Im](Y·conj(ramp_t))`` — so that the cross term of
    slice values ``P`` is ``cross @ [Re P, Im P]``.
    ctf2w: ``(B, N_p)`` real, ``w·C²``. y2w: ``(B,)`` real, ``Σ w|Y|²``.
    """

    size: int
    k_max: int
    pixels: torch.Tensor
    cross: torch.Tensor
    ctf2w: torch.Tensor
    y2w: torch.Tensor

    @property
    def n_images(self) -> int:
        return self.cross.shape[0]

    @property
    def n_shifts(self) -> int:
        return self.cross.shape[1]

    def slice_values(self, slices: torch.Tensor) -> torch.Tensor:
        """``(..., D, D)`` complex slices → ``(..., N_p)`` values on the used pixels."""
        return slices.reshape(*slices.shape[:-2], -1)[..., self.pixels]


def prepare_image_terms(images_ft: torch.Tensor, sigma2: torch.Tensor, shifts: torch.Tensor | None = None,
                        ctf: torch.Tensor | None = None, k_max: int | None = None,
                        half_plane: bool = False) -> ImageTerms:
    """Precompute the image side of the expanded likelihood (module docstring).

    images_ft: ``(B, D, D)`` complex, centered. sigma2: ``(D//2+1,)``. shifts: candidate shifts in
    px ``(x, y)`` (the particle centre relative to the image centre, as in the forward model),
    ``(T, 2)`` shared by all images or ``(B, T, 2)`` per image (default: one zero shift).
    ctf: ``(B, D, D)`` real or ``None``. Memory: ``(2T + 1)·B·N_p`` reals.
    half_plane: use only the pixels of :func:`half_plane_pixels` with their multiplicities (same
    log-likelihoods for real images and maps, half the pixels; slices then need values only there).
    """
    size = images_ft.shape[-1]
    b = images_ft.shape[0]
    dev, rdt = images_ft.device, images_ft.real.dtype
    k = _k_max(k_max, size)
    w_full = shell_weights(sigma2.to(device=dev, dtype=rdt), size, k)
    if half_plane:
        pixels, mult = half_plane_pixels(size, k, dev)
        w = w_full.reshape(-1)[pixels] * mult.to(rdt)  # (N_h,)
    else:
        pixels = used_pixels(size, k, dev)
        w = w_full.reshape(-1)[pixels]  # (N_p,)
    y = images_ft.reshape(b, -1)[:, pixels]  # (B, N_p)
    if shifts is None:
        shifts = torch.zeros(1, 2, dtype=rdt, device=dev)
    shifts = shifts.to(device=dev, dtype=rdt)
    f = freq_grid_2d(size, device=dev, dtype=rdt).reshape(-1, 2)[pixels]  # (N_p, 2) cycles/px
    # Y · conj(ramp_t) = Y · exp(+2πi f·t): cycles/px · px → radians
    phase = 2 * math.pi * (shifts @ f.T)  # (T, N_p) or (B, T, N_p)
    unramp = torch.polar(torch.ones_like(phase), phase)
    if shifts.dim() == 2:
        unramp = unramp[None]
    yt = y[:, None, :] * unramp  # (B, T, N_p)
    if ctf is not None:
        c = ctf.to(device=dev, dtype=rdt).reshape(b, -1)[:, pixels]
    else:
        c = torch.ones(b, pixels.numel(), dtype=rdt, device=dev)
    scale = (2 * w * c)[:, None, :]  # (B, 1, N_p)
    cross = torch.cat([yt.real * scale, yt.imag * scale], dim=-1)
    return ImageTerms(size, k, pixels, cross, w * c * c, (w * y.abs().square()).sum(-1))


def _complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def log_likelihood_table(terms: ImageTerms, slices: torch.Tensor, on_pixels: bool = False) -> torch.Tensor:
    """Log-likelihood (module docstring) of every image × shift × slice.

    slices: ``(M, D, D)`` (shared by all images) or ``(B, M, D, D)`` (per image) complex central
    slices without CTF or shift; with ``on_pixels``, already restricted to the used pixels,
    ``(M, N_p)`` / ``(B, M, N_p)`` (:meth:`ImageTerms.slice_values`). Returns ``(B, T, M)`` in the
    terms' dtype. Memory: the output plus ``3·M·N_p`` reals per slice set.
    """
    n_p = terms.pixels.numel()
    if not on_pixels:
        slices = terms.slice_values(slices)
    p = slices.to(device=terms.cross.device, dtype=_complex_dtype(terms.cross.dtype))
    pc = torch.cat([p.real, p.imag], dim=-1)  # (…, M, 2N_p)
    p2 = p.abs().square()  # (…, M, N_p)
    if pc.dim() == 2:
        cross = (terms.cross.reshape(-1, 2 * n_p) @ pc.T).reshape(terms.n_images, terms.n_shifts, -1)
        norm = terms.ctf2w @ p2.T  # (B, M)
    else:
        cross = torch.bmm(terms.cross, pc.transpose(1, 2))  # (B, T, M)
        norm = torch.bmm(terms.ctf2w[:, None, :], p2.transpose(1, 2))[:, 0]  # (B, M)
    return cross - norm[:, None, :] - terms.y2w[:, None, None]

"""Exact samples of FSTdiff's known-pose posterior of the map by perturb-and-optimise, and the marginal
variances of ``q(V)`` read off them (docs/METHODS.md, "FSTdiff", "Exact posterior samples").

With the poses known the model is linear-Gaussian in the map's free real Fourier coordinates ``θ``
(:mod:`~cryolens.inference.variational_calibrate`): data precision ``A``, data term ``b``, prior precision
``Λ`` (:func:`~cryolens.volumes.support_prior.prior_energy`: independent per shell, or a real-space support
envelope, under which the posterior is no longer diagonal in Fourier space). The posterior is
``N((A + Λ)⁻¹ b, (A + Λ)⁻¹)``, and for ``ε_A ~ N(0, A)`` and ``ε_Λ ~ N(0, Λ)``

    θ_s = (A + Λ)⁻¹ (b + ε_A + ε_Λ)

is an exact draw of it (the data and the prior mean perturbed by their own noise, then the MAP solved):
its mean is the posterior mean and ``Cov = (A + Λ)⁻¹ (A + Λ) (A + Λ)⁻¹``. The marginal variance of each
coordinate is the mean of ``(θ_s − θ̄)²`` over ``K`` draws (``θ̄`` the exact mean, solved the same way),
real and imaginary parts pooled (``2K`` degrees of freedom per Fourier voxel).

- ``A`` exactly, cheaply (:func:`slice_gram`): a trilinear slice point touches 8 voxels, so ``A`` couples a
  voxel only with its 26 neighbours: on the Friedel-completed grid ``G[j, j+o] = Σ_f W_f a_j(f) a_{j+o}(f)``
  (``W_f = C_f²/(2σ²)`` the likelihood's weight of pixel ``f``, both Friedel mates, ``a`` the trilinear
  weights, the shift's phase ramp of modulus 1 drops out) — 27 bands, one pass over the poses and CTFs;
  then ``Aθ`` is 27 shifted products (:meth:`SliceGram.product`) instead of a pass over the images, so the
  conjugate-gradient solves cost seconds.
- ``ε_A``: ``u = Σ_f √(2W_f) z_f a(f)`` per real and imaginary part (``z`` standard normal) has covariance
  ``2G``, the Hessian of ``Σ_f W_f |r_f|²`` on the completed grid; the adjoint of the Friedel completion
  carries it onto ``θ`` (:func:`fold`). Drawn in the same pass.
- ``ε_Λ``: ``prior_energy = (D³/4) Σ_x m(x)²/w(x)`` with ``m`` linear in ``θ``, so ``ε_Λ = Mᵀ v`` with
  ``v = √(D³/2) z / √w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..imaging.ctf import ctf_2d
from ..imaging.fft import ifft3_centered
from ..imaging.grids import flip_centered
from ..io.particles import Particles
from ..volumes.support_prior import prior_energy, support_envelope
from ..volumes.variational import hermitian_complete, trilinear_apodisation
from .likelihood import shell_weights
from .variational import VariationalReconstruction
from .variational_calibrate import _batches, calibrate, conjugate_gradients, data_gradient
from .variational_laplace import laplace_poses

OFFSETS = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@dataclass
class SliceGram:
    """The data precision on the completed grid as 27 bands (module docstring): ``bands (27, D, D, D)``
    float64, ``bands[k][j] = G[j, j + OFFSETS[k]]`` (periodic); ``noise (K, D, D, D, 2)`` float64 draws of
    ``u ~ N(0, 2G)`` per real and imaginary part."""

    bands: torch.Tensor
    noise: torch.Tensor

    def product(self, v: torch.Tensor) -> torch.Tensor:
        """``G v`` ``(D, D, D)`` for a grid ``v (D, D, D)`` (real or complex)."""
        out = torch.zeros_like(v)
        for o, band in zip(OFFSETS, self.bands):
            out = out + band * torch.roll(v, shifts=(-o[0], -o[1], -o[2]), dims=(0, 1, 2))
        return out


def _corners(coords: torch.Tensor, d: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
    """Flat indices, weights and ``(z, y, x)`` offsets of the 8 trilinear neighbours of ``coords (P, 3)``
    (cycles/px, x y z) on the periodic ``(D, D, D)`` grid."""
    pos = coords * d + d // 2
    base = pos.floor()
    frac, base = pos - base, base.long()
    idx, amp, bits = [], [], []
    for corner in range(8):
        b = [(corner >> a) & 1 for a in range(3)]
        w = torch.ones_like(frac[:, 0])
        for a in range(3):
            w = w * (frac[:, a] if b[a] else 1 - frac[:, a])
        ix, iy, iz = ((base[:, a] + b[a]) % d for a in range(3))
        idx.append((iz * d + iy) * d + ix)
        amp.append(w)
        bits.append((b[2], b[1], b[0]))
    return idx, amp, bits


def slice_gram(model: VariationalReconstruction, particles: Particles, draws: int = 0, device=None,
               batch_size: int = 256, generator: torch.Generator | None = None) -> SliceGram:
    """The 27 bands of ``G`` and ``draws`` noise grids (:class:`SliceGram`) at the metadata's poses (or the
    pose means), the model's ``σ²`` and the likelihood's shell limit; one pass (no images read)."""
    d = model.volume.box_size
    device = torch.device(device or "cpu")
    w = shell_weights(model.log_noise.detach().exp().double().to(device), d, model.k_max)
    plane = model.plane.double().to(device)
    bands = torch.zeros(27, d**3, dtype=torch.float64, device=device)
    noise = torch.zeros(d**3, 2 * int(draws), dtype=torch.float64, device=device)
    for batch, rot in _batches(model, particles, device, batch_size, False):
        coords = torch.einsum("bij,mj->bmi", rot.double().to(device), plane)
        weight = w.expand(len(rot), d, d)
        if "ctf" in batch:
            weight = weight * ctf_2d(batch["ctf"], d, particles.pixel_size, device=device, dtype=torch.float64).square()
        weight = (weight * (coords.norm(dim=-1) < 0.5).reshape(-1, d, d)).reshape(-1)
        keep = weight > 0
        idx, amp, bits = _corners(coords.reshape(-1, 3)[keep], d)
        wk = weight[keep]
        for c1 in range(8):
            for c2 in range(8):
                k = OFFSETS.index(tuple(q - p for p, q in zip(bits[c1], bits[c2])))
                bands[k] += torch.bincount(idx[c1], wk * amp[c1] * amp[c2], d**3)
        if draws:
            z = torch.randn(len(wk), 2 * int(draws), generator=generator, dtype=torch.float64).to(device)
            z = z * (2 * wk).sqrt()[:, None]
            for c in range(8):
                noise.index_add_(0, idx[c], z * amp[c][:, None])
    noise = noise.T.reshape(int(draws), 2, d, d, d).permute(0, 2, 3, 4, 1)
    return SliceGram(bands.reshape(27, d, d, d), noise.contiguous())


def complete(x: torch.Tensor, vol) -> torch.Tensor:
    """The Friedel-completed grid ``(D, D, D)`` complex of the coordinates ``x (D, D, D, 2)`` on ``vol``'s
    free voxels (the zero frequency's imaginary part dropped), as the likelihood reads it."""
    mu = torch.view_as_complex(x.contiguous())
    return hermitian_complete(torch.where(vol.dc, mu.real.to(mu.dtype), mu), vol.free)


def fold(u: torch.Tensor, vol) -> torch.Tensor:
    """The adjoint of :func:`complete`: ``(D, D, D, 2)`` ``∇_x ⟨u, complete(x)⟩`` for a completed-grid
    ``u (D, D, D, 2)`` (real, imaginary parts)."""
    with torch.enable_grad():
        x = torch.zeros_like(u).requires_grad_(True)
        return torch.autograd.grad((torch.view_as_real(complete(x, vol)) * u).sum(), x)[0]


def data_hessian(gram: SliceGram, vol, p: torch.Tensor) -> torch.Tensor:
    """``A p`` ``(D, D, D, 2)``: the Hessian of ``Σ_f W_f |r_f|²`` in the coordinates, from the bands."""
    with torch.enable_grad():
        x = p.detach().requires_grad_(True)
        v = complete(x, vol)
        energy = (v.conj() * gram.product(v)).real.sum()
        return torch.autograd.grad(energy, x)[0]


def prior_noise(vol, tau2: torch.Tensor, envelope: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """One ``ε_Λ ~ N(0, Λ)`` ``(D, D, D, 2)`` for the prior of :func:`prior_energy` with the per-voxel power
    ``tau2 (D, D, D)`` and the envelope ``(D, D, D)`` of mean 1 (module docstring)."""
    d = vol.box_size
    z = torch.randn(d, d, d, generator=generator, dtype=torch.float64).to(tau2.device)
    v = (d**3 / 2) ** 0.5 * z / envelope.sqrt()
    with torch.enable_grad():
        x = torch.zeros(d, d, d, 2, dtype=torch.float64, device=tau2.device, requires_grad=True)
        scaled = torch.view_as_complex(x) / tau2.sqrt()
        m = ifft3_centered(hermitian_complete(scaled, vol.free)).real
        return torch.autograd.grad((m * v).sum(), x)[0]


@dataclass
class PosteriorSamples:
    """What :func:`sample_posterior` returns: ``mean (D, D, D, 2)`` the exact posterior mean, ``var
    (D, D, D)`` the marginal variance per real coordinate (parts pooled), ``std_map (D, D, D)`` the
    per-voxel std of the real-space map ``ifft3(θ)`` (not gridding-corrected), ``iterations`` the CG
    iterations of each solve (model units throughout)."""

    mean: torch.Tensor
    var: torch.Tensor
    std_map: torch.Tensor
    iterations: list[int]


def sample_posterior(model: VariationalReconstruction, particles: Particles, tau2: torch.Tensor,
                     envelope: torch.Tensor | None, draws: int = 32, iters: int = 500, tol: float = 1e-4,
                     device=None, batch_size: int = 256, seed: int = 0) -> PosteriorSamples:
    """The exact mean and ``draws`` exact samples of the known-pose posterior (module docstring) under the
    prior of per-shell power ``tau2 (D//2+1,)`` and ``envelope (D, D, D)`` (None: independent), and the
    marginal variances read off them (:class:`PosteriorSamples`)."""
    vol = model.volume
    d, dev = vol.box_size, vol.logvar.device
    g = torch.Generator().manual_seed(int(seed))
    gram = slice_gram(model, particles, draws, device, batch_size, g)
    gram = SliceGram(gram.bands.to(dev), gram.noise.to(dev))
    w = torch.ones(d, d, d, dtype=torch.float64, device=dev) if envelope is None else \
        (envelope.double() / envelope.double().mean()).to(dev)
    t = tau2.double().to(dev)[vol.shells]
    keep = torch.stack([vol.free, vol.free & ~vol.dc], -1).double()
    g0 = gram.bands[OFFSETS.index((0, 0, 0))]
    diag = 2 * (g0 + flip_centered(g0, (0, 1, 2))) + (1 / w).mean() / t  # ≈ (A + Λ)_jj: the preconditioner
    prec = keep / diag[..., None].clamp_min(1e-30)

    def operator(p: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            q = p.detach().requires_grad_(True)
            prior = torch.autograd.grad(prior_energy(q, t, w, vol.free), q)[0]
        return (data_hessian(gram, vol, p) + prior) * keep

    b = -data_gradient(model, particles, torch.zeros(d, d, d, 2, dtype=torch.float64, device=dev), True,
                       device, batch_size).double() * keep
    mean, n0 = conjugate_gradients(operator, b, prec, vol.mean.detach().double(), iters, tol)
    iterations, sq = [n0], torch.zeros(d, d, d, dtype=torch.float64, device=dev)
    sq_map = torch.zeros_like(sq)
    for k in range(int(draws)):
        eps = (fold(gram.noise[k], vol) + prior_noise(vol, t, w, g)) * keep
        x, n = conjugate_gradients(operator, b + eps, prec, mean, iters, tol)
        iterations.append(n)
        dev_k = x - mean
        sq = sq + dev_k.square().sum(-1)
        sq_map = sq_map + ifft3_centered(complete(dev_k, vol)).real.square()
    parts = torch.where(vol.dc, 1.0, 2.0).double()
    return PosteriorSamples(mean, sq / (parts * max(int(draws), 1)), (sq_map / max(int(draws), 1)).sqrt(), iterations)


@torch.no_grad()
def calibrate_sampled(model: VariationalReconstruction, particles: Particles, envelope: torch.Tensor | None,
                      draws: int = 32, device=None, batch_size: int = 256, seed: int = 0) -> PosteriorSamples:
    """``q(V)`` as the exact known-pose posterior's mean and sampled marginal variances (module docstring)
    under the prior with ``envelope (D, D, D)`` (None: independent) and the model's current ``τ²`` (set
    before by :func:`~cryolens.inference.variational_calibrate.calibrate`: the shell power by moments,
    which does not depend on the prior's family); returns the samples' summaries."""
    vol = model.volume
    tau2 = vol.log_prior_var.detach().double().exp()
    out = sample_posterior(model, particles, tau2, envelope, draws, device=device, batch_size=batch_size, seed=seed)
    vol.set_posterior(out.mean, out.var, tau2)
    return out


def mean_envelope(model: VariationalReconstruction, kind: str, floor: float) -> torch.Tensor | None:
    """The support envelope ``(D, D, D)`` of the known-pose prior: ``kind`` ``"auto"`` from the current mean
    map (:func:`~cryolens.volumes.support_prior.support_envelope` with ``floor``), ``"none"`` None."""
    if kind == "none":
        return None
    return support_envelope(ifft3_centered(model.volume.mean_grid().detach().cpu()).real, floor=floor)


def finish_posterior(model: VariationalReconstruction, particles: Particles, options, device) -> torch.Tensor | None:
    """The recipe's steps after training (``fstdiff``'s options ``pose``, ``pose_spread``, ``pose_newton``,
    ``calibrate``, ``calibrate_draws``, ``prior_envelope``, ``envelope_floor``): Laplace pose spreads, or
    the known-pose calibration of ``q(V)`` (closed form, or τ² and the mean under the independent prior and
    then ``calibrate_draws`` exact draws under the envelope). Returns the exact draws' real-space std map
    ``(D, D, D)`` (gridding-corrected, model units) or None."""
    if options.pose == "variational" and options.pose_spread == "laplace":
        laplace_poses(model, particles, device, newton=options.pose_newton)
    if options.pose != "known" or not options.calibrate:
        return None
    if options.calibrate_draws <= 0:
        calibrate(model, particles, mean_envelope(model, options.prior_envelope, options.envelope_floor), device)
        return None
    calibrate(model, particles, None, device)
    env = mean_envelope(model, options.prior_envelope, options.envelope_floor)
    draws = calibrate_sampled(model, particles, env, options.calibrate_draws, device)
    return draws.std_map * trilinear_apodisation(model.volume.box_size, draws.std_map.device)

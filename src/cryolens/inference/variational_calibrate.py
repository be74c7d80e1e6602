"""The known-pose posterior of FSTdiff's ``q(V)`` in closed form: the exact mean and calibrated marginal
variances (docs/METHODS.md, "FSTdiff").

With the poses known (or fixed at their means) the model is linear-Gaussian in the map's free real
coordinates ``θ``: ``log p(Y | θ) = −½ θᵀ A θ + bᵀ θ + const`` with ``A = Σ_i Σ_f C_i(f)² a(f) a(f)ᵀ / σ²(f)``
(``a(f)`` the trilinear weights of the slice point of pixel ``f``, the sum over every pixel inside the
likelihood's shell limit, both Friedel mates, as the likelihood counts them) and a Gaussian prior of
precision ``Λ`` (:mod:`~cryolens.volumes.support_prior`: ``N(0, τ²(k))`` per coordinate, or with a
real-space envelope). The exact posterior is ``N((A + Λ)⁻¹ b, (A + Λ)⁻¹)``.

- Mean: the factorised ``q(V)`` that maximises the ELBO has the exact posterior mean, which SGD approaches
  slowly; :func:`solve_mean` finishes it by conjugate gradients (one data pass per iteration).
- Variances: the ELBO's optimum in the factorised family is ``1/(A_jj + 1/τ²)`` (mean field), smaller
  than the exact marginals ``[(A + Λ)⁻¹]_jj`` because the trilinear slice couples neighbouring voxels.
  :func:`data_precision` computes ``A_jj`` exactly (one pass: the derivative of the analytic
  slice-variance term); the marginal follows from the stationary model
  (:meth:`~cryolens.volumes.support_prior.EnvelopeTable.variance`): the family set to the exact
  marginals, the factorised Gaussian closest to the posterior in ``KL(p ‖ q)``.
- ``τ²(k)``: by the method of moments on the exact mean (:func:`moment_prior`), two rounds; shells
  ``1 … k_max`` only (the zero frequency is one coefficient, the shells past the likelihood's limit are
  barely seen) and only where the estimate is precise; elsewhere the learned ``τ²`` is kept.
- ``σ²(k)``: kept at the ELBO's learned value (data-rich: every pixel of every image informs it).
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered
from ..imaging.forward import shift_and_ctf
from ..imaging.grids import shell_sum
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..volumes.support_prior import EnvelopeTable, prior_energy
from ..volumes.variational import hermitian_complete, mirror_real, trilinear_power
from .likelihood import gaussian_log_likelihood, shell_weights
from .variational import VariationalReconstruction


def data_precision(model: VariationalReconstruction, particles: Particles, device=None,
                   batch_size: int = 256) -> torch.Tensor:
    """``A_jj`` ``(D, D, D)`` float64 (model units, zero off the free voxels): the data precision of each
    free real coordinate (module docstring), at the metadata's poses and shifts or, when the model has a
    pose posterior, at its means. ``σ²`` the model's."""
    vol, d = model.volume, model.volume.box_size
    device = torch.device(device or "cpu")
    u = torch.zeros(d, d, d, dtype=torch.float64, device=device, requires_grad=True)
    free = vol.free.to(device)
    w = shell_weights(model.log_noise.detach().exp().double().to(device), d, model.k_max)
    plane = model.plane.double().to(device)
    total = torch.zeros(d, d, d, dtype=torch.float64, device=device)
    for batch, rot in _batches(model, particles, device, batch_size, False):
        coords = torch.einsum("bij,mj->bmi", rot.double().to(device), plane)
        weight = w.expand(len(rot), d, d)
        if "ctf" in batch:
            weight = weight * ctf_2d(batch["ctf"], d, particles.pixel_size, device=device, dtype=torch.float64).square()
        with torch.enable_grad():
            power = trilinear_power(mirror_real(u, free), coords).reshape(-1, d, d)
            total += torch.autograd.grad((weight * power).sum(), u)[0]
    return 2 * total * free


def _batches(model: VariationalReconstruction, particles: Particles, device, batch_size: int, images: bool):
    """``(batch dict, rotations (B, 3, 3))`` over the data at the metadata's poses or the pose means;
    ``images`` False: zero images (for products with the data precision)."""
    for idx, imgs in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        batch = {"index": it.to(device), "image": (imgs if images else torch.zeros_like(imgs)).to(device),
                 "shift": None if particles.shifts is None else particles.shifts[it].to(device)}
        if particles.ctf is not None:
            batch["ctf"] = particles.ctf[it].to(device)
        if model.poses is None:
            yield batch, particles.rotations[it].to(device)
        else:
            with torch.no_grad():
                yield batch, model.pose_posterior(batch)[0]


def data_gradient(model: VariationalReconstruction, particles: Particles, x: torch.Tensor, images: bool = True,
                  device=None, batch_size: int = 256) -> torch.Tensor:
    """``∇_x Σ_i Σ_f |Y_i − C ramp P x|² / (2σ²)`` ``(D, D, D, 2)`` (model units) at the mean ``x (D, D, D, 2)``
    over the whole data set: ``A x − b`` (``images`` False: ``A x``)."""
    vol = model.volume
    x = x.detach().requires_grad_(True)
    total, sigma2 = torch.zeros_like(x), model.log_noise.detach().exp().to(model.plane.dtype)
    for batch, rot in _batches(model, particles, device, batch_size, images):
        with torch.enable_grad():
            mu = torch.view_as_complex(x)
            grid = hermitian_complete(torch.where(vol.dc, mu.real.to(mu.dtype), mu), vol.free)
            y = fft2_centered(batch["image"].to(model.plane.dtype) / model.norm)
            pred = shift_and_ctf(model.slices(grid, rot), batch["shift"], batch.get("ctf"), model.pixel_size)
            ll = gaussian_log_likelihood(y, pred, sigma2, model.k_max).sum()
            total += torch.autograd.grad(-ll, x)[0]
    return total


def solve_mean(model: VariationalReconstruction, particles: Particles, a: torch.Tensor, prior, diag: torch.Tensor,
               x0: torch.Tensor, iters: int = 40, tol: float = 1e-4, device=None,
               batch_size: int = 256) -> torch.Tensor:
    """The exact posterior mean ``(A + Λ)⁻¹ b`` ``(D, D, D, 2)`` (the ELBO's optimum in ``μ``, which SGD
    approaches slowly along the trilinear slice's weakly seen alternating modes) by conjugate gradients from
    ``x0``; ``a`` the data precision, ``prior(x)`` the product ``Λx``, ``diag (D, D, D)`` its diagonal
    (with ``a``: the preconditioner). One pass over the data per iteration; stops when the preconditioned
    residual norm is below ``tol`` of its start."""
    vol = model.volume
    keep = torch.stack([vol.free, vol.free & ~vol.dc], -1).to(x0.dtype)
    prec = keep / (a + diag).to(x0.dtype)[..., None].clamp_min(1e-30)

    def operator(p: torch.Tensor) -> torch.Tensor:
        return (data_gradient(model, particles, p, False, device, batch_size) + prior(p)) * keep

    b = -data_gradient(model, particles, torch.zeros_like(x0), True, device, batch_size) * keep
    return conjugate_gradients(operator, b, prec, x0, iters, tol)[0]


def conjugate_gradients(operator, b: torch.Tensor, prec: torch.Tensor, x0: torch.Tensor, iters: int,
                        tol: float) -> tuple[torch.Tensor, int]:
    """``(x, iterations)``: preconditioned CG for ``operator(x) = b`` from ``x0`` with the diagonal
    preconditioner ``prec`` (same shape as ``b``; zero on the coordinates that are not free); stops when
    the preconditioned residual norm falls below ``tol`` of its start."""
    x = x0.detach().clone() * (prec > 0)
    r = b - operator(x)
    z = prec * r
    p, rz = z.clone(), float((r * z).sum())
    start, done = rz, 0
    while start > 0 and done < int(iters):
        hp = operator(p)
        alpha = rz / float((p * hp).sum())
        x, r = x + alpha * p, r - alpha * hp
        z, done = prec * r, done + 1
        rz_new = float((r * z).sum())
        if rz_new < tol**2 * start:
            break
        p, rz = z + (rz_new / rz) * p, rz_new
    return x, done


@torch.no_grad()
def calibrate(model: VariationalReconstruction, particles: Particles, envelope: torch.Tensor | None = None,
              device=None, rounds: int = 2, iters: int = 40, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Replace ``q(V)`` by its known-pose optimum with calibrated marginals (module docstring) under the
    prior of :mod:`~cryolens.volumes.support_prior` with ``envelope (D, D, D)`` (None: the independent
    prior): ``rounds`` times the exact mean at the current ``τ²`` then ``τ²`` by moments, then the mean at
    the final ``τ²`` and the marginal variances. Returns per shell ``(D//2+1,)`` the mean ``A_jj τ²``
    and the mean variance over the mean-field one (diagnostics)."""
    vol = model.volume
    d, free, shells = vol.box_size, vol.free, vol.shells
    n = d // 2 + 1
    a = data_precision(model, particles, device, batch_size).to(vol.logvar.device)
    table = EnvelopeTable(d, envelope)
    dev = vol.logvar.device
    w = torch.ones(d, d, d, dtype=torch.float64, device=dev) if envelope is None else \
        (envelope.double() / envelope.double().mean()).to(dev)
    fitted = torch.zeros(n, dtype=torch.bool, device=dev)
    fitted[1:model.k_max + 1] = True  # the DC alone, and shells past the likelihood's limit, keep the learned τ²
    tau2 = vol.log_prior_var.detach().double().exp()
    x = vol.mean.detach().double()
    for step in range(int(rounds) + 1):
        t = tau2[shells]

        def prior(p: torch.Tensor, t: torch.Tensor = t) -> torch.Tensor:
            with torch.enable_grad():
                q = p.detach().requires_grad_(True)
                return torch.autograd.grad(prior_energy(q, t, w, free), q)[0]

        x = solve_mean(model, particles, a, prior, table.inverse_mean / t, x, iters, device=device,
                       batch_size=batch_size)
        if step < rounds:
            estimate, informed = moment_prior(x, a, tau2, vol, table)
            tau2 = torch.where(fitted & informed, estimate.clamp_min(1e-8 * float(tau2.max())), tau2)
    t = tau2[shells]
    var = table.variance(a, t)
    vol.set_posterior(x, var, tau2)
    return {"precision_ratio": _shell_mean(a * t, shells, free, n).cpu().numpy(),
            "over_mean_field": _shell_mean(var * (a + 1 / t), shells, free, n).cpu().numpy()}


def moment_prior(mean: torch.Tensor, a: torch.Tensor, tau2: torch.Tensor, vol, table: EnvelopeTable
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(τ², informed)`` per shell ``(D//2+1,)``: ``τ²`` by the method of moments from the exact posterior mean ``mean
    (D, D, D, 2)`` at the working ``tau2``: ``Σ_j (m_j² − c₁) / Σ_j c₂`` over the shell's real coordinates
    (:meth:`~cryolens.volumes.support_prior.EnvelopeTable.moments`); unbiased in the stationary model
    whatever the working ``τ²``, unlike the mean-field EM update ``mean(m² + v)``. ``informed``: the
    estimate's standard error (``m²`` of a Gaussian has variance ``2 (E m²)²``) is below 30 % of it
    (elsewhere ``m²`` hardly exceeds its noise part, and ``τ²`` is kept). The test does not depend on the
    working ``τ²``'s scale, so a shell whose learned ``τ²`` is far too small is still re-estimated."""
    free, dc, shells = vol.free, vol.dc, vol.shells
    n = tau2.shape[0]
    c1, c2 = table.moments(a, tau2[shells])
    parts = torch.where(dc, 1.0, 2.0).to(mean.dtype)
    sq = mean[..., 0].square() + mean[..., 1].square() * ~dc
    num, den = _shell_total(sq - parts * c1, shells, free, n), _shell_total(parts * c2, shells, free, n)
    count = _shell_total(parts, shells, free, n).clamp_min(1)
    estimate = num / den.clamp_min(1e-30)
    total = _shell_total(sq, shells, free, n)
    error = (2 / count).sqrt() * total / den.clamp_min(1e-30)  # m² of a Gaussian: variance 2 (E m²)²
    return estimate, error < 0.3 * estimate


def _shell_total(x: torch.Tensor, shells: torch.Tensor, free: torch.Tensor, n: int) -> torch.Tensor:
    """``(n,)`` float64 sum of ``x (D, D, D)`` over the free voxels of each shell."""
    return shell_sum(torch.where(free, x.double(), 0.0), shells, n)


def _shell_mean(x: torch.Tensor, shells: torch.Tensor, free: torch.Tensor, n: int) -> torch.Tensor:
    """``(n,)`` float64 mean of ``x (D, D, D)`` over the free voxels of each shell."""
    return _shell_total(x, shells, free, n) / _shell_total(torch.ones_like(x), shells, free, n).clamp_min(1)

"""The known-pose posterior of FSTdiff's ``q(V)`` in closed form: calibrated marginal variances
(docs/METHODS.md, "FSTdiff").

With the poses known (or fixed at their means) the model is linear-Gaussian in the map's free real
coordinates ``θ``: ``log p(Y | θ) = −½ θᵀ A θ + bᵀ θ + const`` with ``A = Σ_i Σ_f C_i(f)² a(f) a(f)ᵀ / σ²(f)``
(``a(f)`` the trilinear weights of the slice point of pixel ``f``, the sum over every pixel inside the
likelihood's shell limit, both Friedel mates, as the likelihood counts them) and the prior ``N(0, τ²(k))``
per coordinate. The exact posterior is ``N((A + Λ)⁻¹ b, (A + Λ)⁻¹)``, ``Λ = diag 1/τ²``.

- The factorised ``q(V)`` that maximises the ELBO has the exact posterior mean but the variances
  ``1/(A_jj + 1/τ²)`` (mean field): smaller than the exact marginals ``[(A + Λ)⁻¹]_jj`` because the
  trilinear slice couples neighbouring voxels. :func:`data_precision` computes ``A_jj`` exactly (one
  pass over the data: the derivative of the analytic slice-variance term); the marginal is then
  ``κ(A_jj τ²) / (A_jj + 1/τ²)`` (:func:`~cryolens.volumes.variational.coupling_factor`, the coupling of
  a locally uniform sampling, 1 where the prior dominates, 1.54 where the data do).
- ``τ²(k)``: the ELBO's own fixed point, EM (``τ² = mean over the shell's coordinates of m² + v``),
  iterated to convergence in closed form (:func:`calibrate`): the learned value moves too slowly by SGD
  where the data are weak. Shells ``1 … k_max`` only: the zero frequency is one coefficient, and the
  shells past the likelihood's limit are barely seen (there EM runs to ``τ² → 0``); they keep the
  learned ``τ²``. While ``τ²`` changes, the mean is re-shrunk voxel by voxel,
  ``m = μ (A_jj + 1/τ₀²)/(A_jj + 1/τ²)`` (the diagonal part of the exact update).
- ``σ²(k)``: kept at the ELBO's learned value (data-rich: every pixel of every image informs it).
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.ctf import ctf_2d
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..volumes.variational import coupling_factor, mirror_real, trilinear_power
from .likelihood import shell_weights
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
    for idx, images in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        rot = particles.rotations[it] if model.poses is None else None
        if rot is None:
            batch = {"index": it.to(device), "image": images.to(device),
                     "shift": None if particles.shifts is None else particles.shifts[it].to(device)}
            with torch.no_grad():
                rot = model.pose_posterior(batch)[0]
        coords = torch.einsum("bij,mj->bmi", rot.double().to(device), plane)
        weight = w.expand(len(it), d, d)
        if particles.ctf is not None:
            weight = weight * ctf_2d(particles.ctf[it], d, particles.pixel_size, device=device,
                                     dtype=torch.float64).square()
        with torch.enable_grad():
            power = trilinear_power(mirror_real(u, free), coords).reshape(-1, d, d)
            total += torch.autograd.grad((weight * power).sum(), u)[0]
    return 2 * total * free


@torch.no_grad()
def calibrate(model: VariationalReconstruction, particles: Particles, device=None, em_steps: int = 2000,
              batch_size: int = 256) -> dict[str, np.ndarray]:
    """Replace ``q(V)``'s variances by the coupling-corrected marginals and ``τ²`` by its converged EM value
    (module docstring), re-shrinking the mean; returns per shell ``(D//2+1,)`` the mean ``r = A_jj τ²``
    (data over prior precision) and the mean ``κ`` (diagnostics)."""
    vol = model.volume
    a = data_precision(model, particles, device, batch_size).to(vol.logvar.device)
    free, dc, shells = vol.free, vol.dc, vol.shells
    n = vol.box_size // 2 + 1
    mu = vol.mean.detach().double()
    sq = (mu[..., 0].square() + mu[..., 1].square() * ~dc)
    parts = torch.where(dc, 1.0, 2.0).double() * free
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, shells[free], parts[free])
    lam0 = (-vol.log_prior_var.detach().double()).exp()[shells]
    tau2 = vol.log_prior_var.detach().double().exp()
    floor = 1e-8 * float(tau2.max())
    fitted = torch.zeros(n, dtype=torch.bool)
    fitted[1:model.k_max + 1] = True  # the DC alone, and shells past the likelihood's limit, keep the learned τ²
    for _ in range(int(em_steps)):
        lam = 1 / tau2[shells]
        shrink = ((a + lam0) / (a + lam)).square()
        var = coupling_factor(a / lam) / (a + lam)
        per = (sq * shrink + parts * var) * free
        em = torch.zeros(n, dtype=torch.float64).index_add_(0, shells[free], per[free]) / count.clamp_min(1)
        tau2 = torch.where(fitted, em.clamp_min(floor), tau2)
    lam = 1 / tau2[shells]
    ratio = a / lam
    var = coupling_factor(ratio) / (a + lam)
    vol.set_posterior(mu * ((a + lam0) / (a + lam))[..., None], var, tau2)
    return {"precision_ratio": _shell_mean(ratio, shells, free, n).numpy(),
            "coupling": _shell_mean(coupling_factor(ratio), shells, free, n).numpy()}


def _shell_mean(x: torch.Tensor, shells: torch.Tensor, free: torch.Tensor, n: int) -> torch.Tensor:
    """``(n,)`` float64 mean of ``x (D, D, D)`` over the free voxels of each shell."""
    s = torch.zeros(n, dtype=torch.float64).index_add_(0, shells[free], x[free].double())
    c = torch.zeros(n, dtype=torch.float64).index_add_(0, shells[free], torch.ones_like(x[free], dtype=torch.float64))
    return s / c.clamp_min(1)

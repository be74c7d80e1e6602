"""Calibration of FSTdiff's q(V) at known poses against the exact posterior of a tiny linear-Gaussian problem
(float64, D = 8): the design matrix of the trilinear Fourier-slice model written out by autograd, the
posterior ``N(A⁻¹b, A⁻¹)`` solved densely, maps and noise drawn from the model's own prior."""

import math

import numpy as np
import torch

from cryolens.imaging.fft import fft2_centered, fft3_centered, ifft2_centered, ifft3_centered
from cryolens.imaging.grids import freq_grid_2d, freq_grid_3d, shell_index_2d, shell_index_3d
from cryolens.imaging.rotations import random_rotations
from cryolens.inference.variational import VariationalReconstruction
from cryolens.inference.variational_calibrate import calibrate, data_gradient, data_precision
from cryolens.inference.variational_sampling import data_hessian, sample_posterior, slice_gram
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles
from cryolens.volumes.neural import canonical_half
from cryolens.volumes.support_prior import EnvelopeTable, coupling_factor, prior_energy
from cryolens.volumes.variational import VariationalVoxelVolume, hermitian_complete
from cryolens.volumes.voxel import sample_fourier

D, N, SIGMA2 = 8, 150, 4.0
INSIDE = (shell_index_2d(D) <= D // 2 - 1).reshape(-1)  # the likelihood's pixels


def _problem(tmp_path):
    """(particles, model, design (N·P·2, n) float64, prior (n,), tau2, coordinate masks) of the tiny problem."""
    g = torch.Generator().manual_seed(0)
    f3 = freq_grid_3d(D, dtype=torch.float64)
    free = canonical_half(f3) & (f3.norm(dim=-1) < 0.5)
    dc = f3.norm(dim=-1) == 0
    nf = int(free.sum())
    tau2 = 4.0 * torch.exp(-torch.arange(D // 2 + 1, dtype=torch.float64) / 1.5) + 0.05
    rots = random_rotations(N, g).double()
    plane = freq_grid_2d(D, dtype=torch.float64).reshape(-1, 2)
    plane = torch.cat([plane, torch.zeros(D * D, 1, dtype=torch.float64)], 1)

    def predict(x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(D, D, D, dtype=torch.complex128)
        grid[free] = torch.complex(x[:nf], x[nf:])
        out = sample_fourier(hermitian_complete(grid, free), torch.einsum("bij,mj->bmi", rots, plane))
        return torch.view_as_real(out[:, INSIDE]).reshape(-1)

    design = torch.stack([predict(e) for e in torch.eye(2 * nf, dtype=torch.float64)], 1)  # the model is linear
    keep = torch.cat([torch.ones(nf, dtype=torch.bool), ~dc[free]])  # the DC's imaginary part is not a coordinate
    prior = torch.cat([tau2[shell_index_3d(D).clamp_max(D // 2)][free]] * 2)[keep]
    write_stack(tmp_path / "s.mrcs", np.zeros((N, D, D), np.float32), 2.0)
    particles = Particles(2.0, D, [str(tmp_path / "s.mrcs")], np.zeros(N, int), np.arange(N), rots.float(),
                          torch.zeros(N, 2), None)
    model = VariationalReconstruction(VariationalVoxelVolume(D, None, -2.0, tau2.float(), learn_prior=False), None,
                                      N, 2.0, torch.full((D // 2 + 1,), SIGMA2), learn_noise=False)
    return particles, model, design[:, keep], prior, free, keep


def _as_coordinates(grid: torch.Tensor, free: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.cat([grid[free], grid[free]])[keep].double()


def test_data_precision_is_the_design_diagonal(tmp_path):
    """``data_precision`` equals ``diag(JᵀJ)/σ²`` of the written-out design (every pixel inside the likelihood's
    limit, both Friedel mates, real and imaginary parts) to rounding."""
    particles, model, design, prior, free, keep = _problem(tmp_path)
    mine = _as_coordinates(data_precision(model, particles), free, keep)
    torch.testing.assert_close(mine, design.square().sum(0) / SIGMA2, rtol=1e-9, atol=1e-9)


def test_calibrated_variance_matches_the_exact_posterior_and_covers(tmp_path):
    """After ``calibrate`` (τ² held at the truth): per coordinate the variance is within 10 % of the exact
    marginal ``[A⁻¹]_jj`` on average per shell (the mean-field ``1/A_jj`` is 25–35 % short where the data
    dominate); over 20 maps and noise draws from the model's own prior (≈ 5,000 coordinates; the noise white
    in real space, so ``σ²/2`` per part and Friedel-symmetric), the truth lies
    within ±1σ / ±2σ of the exact posterior mean in 0.683 / 0.954 ± 0.02 of cases with the calibrated σ, and
    the mean-field σ misses that band (so a variance 30 % off fails)."""
    particles, model, design, prior, free, keep = _problem(tmp_path)
    a = design.T @ design / SIGMA2 + torch.diag(1 / prior)  # both Friedel mates counted, as the likelihood does
    exact = torch.linalg.inv(a).diagonal()
    calibrate(model, particles, rounds=0)
    var = _as_coordinates(model.volume.logvar.detach().exp(), free, keep)
    shells = _as_coordinates(model.volume.shells.double(), free, keep)
    for k in range(1, D // 2):
        ratio = float((var[shells == k] / exact[shells == k]).mean())
        assert abs(ratio - 1) < 0.1, (k, ratio)
    g = torch.Generator().manual_seed(3)
    z = []
    for _ in range(20):
        truth = torch.randn(len(prior), generator=g, dtype=torch.float64) * prior.sqrt()
        noise = fft2_centered(torch.randn(N, D, D, generator=g, dtype=torch.float64) * math.sqrt(SIGMA2) / D)
        y = design @ truth + torch.view_as_real(noise.reshape(N, -1)[:, INSIDE]).reshape(-1)  # E|N(f)|² = σ²
        z.append((torch.linalg.solve(a, design.T @ y / SIGMA2) - truth).abs())
    z = torch.cat(z)
    cover = lambda v, m: float((z < m * v.repeat(20).sqrt()).double().mean())  # noqa: E731
    assert abs(cover(var, 1) - 0.683) < 0.02 and abs(cover(var, 2) - 0.954) < 0.02
    mean_field = 1 / a.diagonal()
    assert abs(cover(mean_field, 1) - 0.683) > 0.03
    assert abs(cover(var / 1.3, 1) - 0.683) > 0.02 and abs(cover(var * 1.3, 1) - 0.683) > 0.02


def test_coupling_factor_limits():
    """``coupling_factor``: 1 with no data, ``(8/27)·3^{3/2} ≈ 1.54`` (the continuum's ``(8/27)·E[1/g]``) with
    no prior, in between at ``r = 10``."""
    assert abs(float(coupling_factor(torch.tensor(0.0))) - 1) < 1e-3
    assert abs(float(coupling_factor(torch.tensor(1e6))) - 8 / 27 * 3 ** 1.5) < 5e-3
    assert 1.1 < float(coupling_factor(torch.tensor(10.0))) < 1.5


def test_calibrate_mean_is_the_exact_posterior_mean(tmp_path):
    """``calibrate`` (τ² held) replaces the mean by ``(A + Λ)⁻¹ b`` of the written-out problem for images made by
    the model's own slices plus white noise: conjugate gradients agree with the dense solve to 2·10⁻³ (the
    likelihood is evaluated in float32)."""
    particles, model, design, prior, free, keep = _problem(tmp_path)
    g = torch.Generator().manual_seed(5)
    truth = torch.randn(len(prior), generator=g, dtype=torch.float64) * prior.sqrt()
    grid = torch.zeros(int(free.sum()) * 2, dtype=torch.float64)
    grid[keep] = truth
    full = torch.zeros(D, D, D, dtype=torch.complex128)
    full[free] = torch.complex(grid[:int(free.sum())], grid[int(free.sum()):])
    clean = model.slices(hermitian_complete(full, free), particles.rotations.double())
    images = ifft2_centered(clean).real + torch.randn(N, D, D, generator=g, dtype=torch.float64) * math.sqrt(SIGMA2) / D
    write_stack(tmp_path / "s.mrcs", images.float().numpy(), 2.0)
    y = torch.view_as_real(fft2_centered(images.float().double()).reshape(N, -1)[:, INSIDE]).reshape(-1)
    a = design.T @ design / SIGMA2 + torch.diag(1 / prior)
    exact = torch.linalg.solve(a, design.T @ y / SIGMA2)
    calibrate(model, particles, rounds=0, iters=200)
    mine = torch.cat([model.volume.mean.detach()[..., 0][free], model.volume.mean.detach()[..., 1][free]])[keep]
    assert float((mine.double() - exact).norm() / exact.norm()) < 2e-3


def test_envelope_variance_is_the_lattice_inverse():
    """``EnvelopeTable.variance`` with a non-uniform envelope is the diagonal of ``(n G + Λ)⁻¹`` on a 6³ periodic
    lattice, ``G`` the trilinear Gram stencil written out voxel by voxel and ``Λ = U diag(1/(τ² w)) U*`` (``U``
    the unitary centred transform): the stationary model is exact there, whatever its conventions."""
    n_lat, n, tau2 = 6, 3.0, 0.7
    idx = torch.stack(torch.meshgrid(*[torch.arange(n_lat)] * 3, indexing="ij"), -1).reshape(-1, 3)
    off = (idx[:, None, :] - idx[None, :, :]) % n_lat
    per_axis = torch.where(off == 0, 2 / 3, torch.where((off == 1) | (off == n_lat - 1), 1 / 6, 0.0)).double()
    gram = per_axis.prod(-1)
    w = 0.2 + torch.rand(n_lat, n_lat, n_lat, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = w / w.mean()
    eye = torch.eye(n_lat**3, dtype=torch.complex128).reshape(-1, n_lat, n_lat, n_lat)
    u = fft3_centered(eye).reshape(n_lat**3, -1).T / n_lat**1.5  # columns: U e_j
    lam = u @ torch.diag((1 / (tau2 * w)).reshape(-1).to(torch.complex128)) @ u.conj().T
    exact = torch.linalg.inv(n * gram + lam).diagonal().real
    assert float(exact.std() / exact.mean()) < 1e-9  # stationary: the same for every voxel
    table = EnvelopeTable(n_lat, w)
    mine = table.variance(torch.tensor(8 * n / 27), torch.tensor(tau2))
    assert abs(float(mine) / float(exact.mean()) - 1) < 2e-3


def test_prior_energy_without_envelope_is_the_independent_prior():
    """``prior_energy`` with ``w ≡ 1``: its gradient is ``θ/τ²`` on every free non-DC coordinate."""
    f3 = freq_grid_3d(D)
    free = canonical_half(f3) & (f3.norm(dim=-1) < 0.5)
    dc = f3.norm(dim=-1) == 0
    tau2 = (1 + torch.rand(D, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(D, D, D, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    grad = torch.autograd.grad(prior_energy(x, tau2, torch.ones(D, D, D, dtype=torch.float64), free), x)[0]
    keep = torch.stack([free & ~dc, free & ~dc], -1)
    torch.testing.assert_close(grad[keep], (x.detach() / tau2[..., None])[keep], rtol=1e-9, atol=1e-12)


def _dense_prior(model, tau2_voxel: torch.Tensor, w: torch.Tensor, free, keep) -> torch.Tensor:
    """``Λ`` of :func:`prior_energy` written out column by column (its gradient is linear), on the coordinates."""
    nf = int(free.sum())
    cols = []
    for e in torch.eye(2 * nf, dtype=torch.float64)[keep]:
        x = torch.zeros(D, D, D, 2, dtype=torch.float64)
        x[..., 0][free], x[..., 1][free] = e[:nf], e[nf:]
        x.requires_grad_(True)
        g = torch.autograd.grad(prior_energy(x, tau2_voxel, w, free), x)[0]
        cols.append(torch.cat([g[..., 0][free], g[..., 1][free]])[keep])
    return torch.stack(cols, 1)


def test_slice_gram_product_is_the_data_hessian(tmp_path):
    """The 27 bands of ``slice_gram`` give the same ``A p`` as the autograd pass over the likelihood
    (``data_gradient`` with zero images) and as the written-out design, for a random ``p``."""
    particles, model, design, prior, free, keep = _problem(tmp_path)
    p = torch.randn(D, D, D, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    p = p * torch.stack([free, free & ~model.volume.dc], -1)
    gram = slice_gram(model, particles)
    mine = data_hessian(gram, model.volume, p)
    torch.testing.assert_close(mine, data_gradient(model, particles, p.float(), False).double(), rtol=1e-4, atol=1e-4)
    coords = torch.cat([p[..., 0][free], p[..., 1][free]])[keep]
    dense = design.T @ (design @ coords) / SIGMA2
    torch.testing.assert_close(torch.cat([mine[..., 0][free], mine[..., 1][free]])[keep], dense, rtol=1e-8, atol=1e-8)


def test_sampled_variances_match_the_dense_inverse_with_a_support_prior(tmp_path):
    """Perturb-and-optimise under a real-space envelope prior (off-diagonal in Fourier space), 120 draws: the
    pooled per-voxel variances agree with the diagonal of the dense float64 ``(A + Λ)⁻¹`` (``Λ`` written out
    from :func:`prior_energy`) to 6 % on average per shell and 40 % per voxel (the sampling error of 240
    squares is 9 %), so do the real-space map's per-voxel variances (to 6 % on average, 55 % per voxel, 120
    squares), and the mean is the dense solve."""
    particles, model, design, prior, free, keep = _problem(tmp_path)
    vol, nf = model.volume, int(free.sum())
    g = torch.Generator().manual_seed(6)
    images = torch.randn(N, D, D, generator=g, dtype=torch.float64) * math.sqrt(SIGMA2) / D
    write_stack(tmp_path / "s.mrcs", images.float().numpy(), 2.0)
    y = torch.view_as_real(fft2_centered(images.float().double()).reshape(N, -1)[:, INSIDE]).reshape(-1)
    w = 0.05 + (freq_grid_3d(D, dtype=torch.float64).norm(dim=-1) * D < 2.5).double()
    w = w / w.mean()
    tau2 = vol.log_prior_var.detach().double().exp()
    exact = torch.linalg.inv(design.T @ design / SIGMA2 + _dense_prior(model, tau2[vol.shells], w, free, keep))
    out = sample_posterior(model, particles, tau2, w, draws=120, tol=1e-8)
    mean = torch.cat([out.mean[..., 0][free], out.mean[..., 1][free]])[keep]
    dense_mean = exact @ (design.T @ y / SIGMA2)
    assert float((mean - dense_mean).norm() / dense_mean.norm()) < 2e-3
    var = torch.full((2 * nf,), float("nan"), dtype=torch.float64)
    var[keep] = exact.diagonal()
    pooled, mine, shells = var.reshape(2, nf).nanmean(0), out.var[free], vol.shells[free]
    for k in range(1, D // 2):
        ratio = float((mine[shells == k] / pooled[shells == k]).mean())
        assert abs(ratio - 1) < 0.06, (k, ratio)
    assert float((mine / pooled - 1).abs().max()) < 0.4
    cols = []
    for e in torch.eye(2 * nf, dtype=torch.float64)[keep]:
        grid = torch.zeros(D, D, D, dtype=torch.complex128)
        grid[free] = torch.complex(e[:nf], e[nf:])
        cols.append(ifft3_centered(hermitian_complete(grid, free)).real.reshape(-1))
    m = torch.stack(cols, 1)
    map_var = ((m @ exact) * m).sum(1)
    assert abs(float(out.std_map.square().reshape(-1).mean() / map_var.mean()) - 1) < 0.06
    assert float((out.std_map.square().reshape(-1) / map_var - 1).abs().max()) < 0.55  # 120 squares: 13 % sd

"""A Fourier voxel grid with a Gaussian variational posterior ``q(V)`` (FSTdiff, docs/METHODS.md).

Every independent Fourier coefficient of the map (docs/CONVENTIONS.md: centred ``(D, D, D)`` transform,
``[z, y, x]``, frequencies in cycles/px) has its own Gaussian: a mean ``μ`` (complex) and a log-variance
``log s²``, the variance of its real part and of its imaginary part each (``E|V − μ|² = 2 s²``).

**Hermitian symmetry.** The map is real, so ``V(−k) = conj V(k)``. Only the canonical half-space
(:func:`~cryolens.volumes.neural.canonical_half`) inside Nyquist (``|k| < ½``) is free: those voxels are
the parameters that count (the *free* mask); slices read the grid through
:func:`~cryolens.volumes.voxel.sample_fourier`, which folds every query onto that half and conjugates it,
so the other half of the arrays is never read. The zero frequency is its own partner: it is real (its
imaginary part is neither sampled nor counted). Full grids (:meth:`mean_grid`, :meth:`sample`) are
completed by Friedel symmetry so that their inverse transforms are real maps.

**Sampling** (:meth:`sample`): reparametrisation ``V = μ + s ⊙ ε`` with ``ε`` standard normal per real
degree of freedom, differentiable in ``μ`` and ``log s²``.

**Prior** (:meth:`kl`): independent ``N(0, τ²(k))`` per real degree of freedom, ``τ²`` one value per
Fourier shell ``k = round(|f|·D)`` (``log_prior_var``, learned by the ELBO unless frozen: empirical Bayes).
The KL divergence ``KL(q(V) ‖ p(V))`` is the closed-form Gaussian one summed over the free real degrees
of freedom (:func:`gaussian_kl`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..imaging.fft import fft3_centered, ifft3_centered
from ..imaging.grids import flip_centered, freq_grid_3d, radial_average, shell_index_3d
from .neural import canonical_half
from .voxel import FourierGridModel


def gaussian_kl(mean: torch.Tensor, var: torch.Tensor, prior_var: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean, var) ‖ N(0, prior_var))`` of 1-D Gaussians, closed form
    ``½ (var/prior_var + mean²/prior_var − 1 − log(var/prior_var))`` (broadcasting shapes)."""
    ratio = var / prior_var
    return 0.5 * (ratio + mean.square() / prior_var - 1 - torch.log(ratio))


def hermitian_complete(grid: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``(D, D, D)`` complex: ``grid`` on the ``free`` voxels ``(D, D, D)`` bool, ``conj grid(−k)`` on their
    partners, zero elsewhere (beyond Nyquist)."""
    kept = torch.where(free, grid, torch.zeros_like(grid))
    dims = (-3, -2, -1)
    partner = flip_centered(free, dims) & ~free  # the zero frequency is its own partner: kept once
    return kept + torch.where(partner, flip_centered(kept, dims).conj(), torch.zeros_like(kept))


def mirror_real(values: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``(D, D, D)`` real: ``values`` on the ``free`` voxels and copied onto their Friedel partners (a
    variance is the same at ``k`` and ``−k``), zero elsewhere; differentiable in ``values``."""
    kept = values * free
    dims = (-3, -2, -1)
    partner = flip_centered(free, dims) & ~free
    return kept + flip_centered(kept, dims) * partner


def trilinear_power(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``Σ_j a_j² values_j`` ``(B, M)`` at ``coords (B, M, 3)`` cycles/px: the 8 trilinear neighbours ``j`` of
    each point on the periodic ``(D, D, D)`` real grid ``values`` with their weights ``a_j`` squared (the
    variance of an interpolated value when ``values`` are independent variances); zero at ``|k| ≥ ½``."""
    d = values.shape[-1]
    pos = coords * d + d // 2  # index units (x, y, z)
    base = pos.floor()
    frac = (pos - base).to(values.dtype)
    base = base.long()
    out = torch.zeros(coords.shape[:-1], dtype=values.dtype, device=values.device)
    for corner in range(8):
        bits = [(corner >> a) & 1 for a in range(3)]
        w = torch.ones_like(out)
        for a, b in enumerate(bits):
            w = w * (frac[..., a] if b else 1 - frac[..., a])
        ix, iy, iz = ((base[..., a] + b) % d for a, b in enumerate(bits))
        out = out + w.square() * values[iz, iy, ix]
    return out * (coords.norm(dim=-1) < 0.5)


def trilinear_apodisation(d: int, device=None) -> torch.Tensor:
    """``(D, D, D)`` float64 ``Π_axes sinc²(x/D)`` (``x`` px from the centre): trilinear interpolation of a
    Fourier grid reads the transform of the real-space map multiplied by this, so a grid fitted to images
    is the transform of ``map / apodisation`` and its map is ``ifft3(grid) · apodisation``."""
    s = torch.sinc((torch.arange(d, dtype=torch.float64, device=device) - d // 2) / d).square()
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


class VariationalVoxelVolume(FourierGridModel):
    """``q(V)`` on a ``(D, D, D)`` Fourier grid (module docstring); a
    :class:`~cryolens.volumes.protocol.VolumeModel` whose ``fourier``/``hartley``/``render`` give the
    posterior mean.

    box_size: ``D``. volume: real-space start map ``(D, D, D)`` ``[z, y, x]`` (its transform is the initial
    mean) or None (zeros). init_logvar: initial ``log(s²/τ²(k))`` of every voxel (relative to its shell's
    prior). prior_var: ``(D//2+1,)`` initial ``τ²`` per shell, or None (the shell power of the start map, or 1).
    learn_prior: ``τ²`` is a parameter (else a fixed buffer)."""

    def __init__(self, box_size: int, volume: torch.Tensor | None = None, init_logvar: float = -6.0,
                 prior_var: torch.Tensor | None = None, learn_prior: bool = True):
        super().__init__()
        d = int(box_size)
        self.box_size, self.zdim = d, 0
        ft = torch.zeros(d, d, d, dtype=torch.complex64) if volume is None else fft3_centered(volume.float())
        f = freq_grid_3d(d)
        free = canonical_half(f) & (f.norm(dim=-1) < 0.5)
        self.register_buffer("free", free, persistent=False)
        self.register_buffer("dc", (f.norm(dim=-1) == 0), persistent=False)
        self.register_buffer("shells", shell_index_3d(d).clamp_max(d // 2), persistent=False)
        if prior_var is None:
            power = radial_average(ft.abs().square().double() / 2, self.shells, d // 2 + 1).float()
            prior_var = power.clamp_min(1e-6 * float(power.max())) if volume is not None else torch.ones(d // 2 + 1)
        log_prior = torch.log(torch.as_tensor(prior_var, dtype=torch.float32))
        self.logvar = nn.Parameter(log_prior[self.shells] + float(init_logvar))
        # the mean in units of its shell's starting prior std, so that one Adam step is alike in every shell
        self.register_buffer("unit", (0.5 * log_prior).exp()[self.shells][..., None].clone())
        self.scaled_mean = nn.Parameter(torch.view_as_real(ft.to(torch.complex64)) / self.unit)
        if learn_prior:
            self.log_prior_var = nn.Parameter(log_prior.clone())
        else:
            self.register_buffer("log_prior_var", log_prior.clone())

    @property
    def mean(self) -> torch.Tensor:
        """The posterior means ``(D, D, D, 2)`` (real, imaginary parts)."""
        return self.scaled_mean * self.unit

    def mean_grid(self) -> torch.Tensor:
        """The posterior mean ``(D, D, D)`` complex, Friedel-completed, real at the zero frequency."""
        mu = torch.view_as_complex(self.mean.contiguous())
        return hermitian_complete(torch.where(self.dc, mu.real.to(mu.dtype), mu), self.free)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw ``(D, D, D)`` complex of ``q(V)`` by reparametrisation (module docstring),
        Friedel-completed; differentiable in ``mean`` and ``logvar``."""
        s, mean = (0.5 * self.logvar).exp(), self.mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        draw = torch.view_as_complex((mean + s[..., None] * eps).contiguous())
        return hermitian_complete(torch.where(self.dc, draw.real.to(draw.dtype), draw), self.free)

    def kl(self) -> torch.Tensor:
        """``KL(q(V) ‖ p(V))`` (scalar, nats): the Gaussian KL of every free real degree of freedom."""
        prior = self.log_prior_var.exp()[self.shells]
        var, mean = self.logvar.exp(), self.mean
        per = gaussian_kl(mean[..., 0], var, prior) + gaussian_kl(mean[..., 1], var, prior) * ~self.dc
        return (per * self.free).sum()

    def slice_variance(self, coords: torch.Tensor) -> torch.Tensor:
        """``E|V(k) − μ(k)|²`` ``(B, M)`` at ``coords (B, M, 3)`` cycles/px under ``q(V)``, for the trilinear
        interpolation :meth:`fourier` uses: ``Σ_j a_j² · 2 s_j²`` over the 8 neighbours ``j`` with weights
        ``a_j`` (``s²`` only at the real zero frequency); zero at ``|k| ≥ ½``."""
        var = torch.where(self.dc, 0.5, 1.0) * 2 * self.logvar.exp()
        return trilinear_power(mirror_real(var, self.free), coords)

    def set_posterior(self, mean: torch.Tensor, var: torch.Tensor, prior_var: torch.Tensor) -> None:
        """Overwrite ``q(V)`` and the prior: ``mean (D, D, D, 2)``, ``var (D, D, D)`` (per real part) and
        ``prior_var (D//2+1,)`` ``τ²``, in the model's units (what :meth:`mean`, ``logvar.exp()`` and
        ``log_prior_var.exp()`` return)."""
        with torch.no_grad():
            self.scaled_mean.copy_(mean.to(self.scaled_mean) / self.unit)
            self.logvar.copy_(var.to(self.logvar).clamp_min(1e-30).log())
            self.log_prior_var.copy_(prior_var.to(self.log_prior_var).log())

    def render(self, z: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """The real-space mean map ``(1, D, D, D)``: the inverse transform of the mean grid times the
        trilinear apodisation (:func:`trilinear_apodisation`, the gridding correction)."""
        grid = self.mean_grid().detach()
        return (ifft3_centered(grid).real * trilinear_apodisation(self.box_size, grid.device))[None].float()

    def grid(self) -> torch.Tensor:
        """The posterior mean's transform: ``fourier``, ``hartley`` and ``render``
        (:class:`~cryolens.volumes.voxel.FourierGridModel`) answer for the posterior mean."""
        return self.mean_grid()

    @torch.no_grad()
    def std_map(self, samples: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-voxel standard deviation ``(D, D, D)`` float32 of the real-space map (gridding-corrected as
        :meth:`render`) under ``q(V)``, from ``samples`` draws (the unbiased sample std)."""
        maps = torch.stack([ifft3_centered(self.sample(generator)).real for _ in range(int(samples))])
        return (maps.std(dim=0) * trilinear_apodisation(self.box_size, maps.device)).float()

    @torch.no_grad()
    def shell_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(posterior, prior)`` per shell ``(D//2+1,)`` float32: the RMS posterior std ``s`` of the free
        voxels of each shell, and the prior's ``τ``."""
        n = self.box_size // 2 + 1
        var = self.logvar.exp().double()[self.free]
        mean_var = radial_average(var, self.shells[self.free], n)
        return mean_var.sqrt().float(), (0.5 * self.log_prior_var.detach()).exp().float()

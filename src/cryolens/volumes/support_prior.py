"""A real-space support prior for the Fourier grid of :mod:`~cryolens.volumes.variational`, and the
stationary model of the trilinear slice's coupling used to calibrate ``q(V)`` (docs/METHODS.md, "FSTdiff").

**Prior.** The map's free real Fourier coordinates ``θ`` have the precision ``Λ = T⁻½ F W⁻¹ F* T⁻½``:
``T`` the per-shell power ``τ²(k)``, ``W`` a real-space envelope ``w(x)`` of mean 1 over the box (``F`` the
centred transform). ``w ≡ 1`` is the independent prior ``N(0, τ²(k))`` per coordinate; an envelope that
is small outside the particle says that the signal is there (a solvent mask, as RELION applies to its
references). :func:`prior_energy` is ``½ θᵀ Λ θ`` (its gradient, by autograd, is ``Λθ``).

**Stationary model.** Near a voxel ``j`` (where ``τ²`` and the sampling density ``n`` of the slices are
about constant), trilinear interpolation makes the data precision the convolution of the Gram stencil
(per axis ``[1/6, 2/3, 1/6]`` times ``n``; its diagonal ``A_jj = 8n/27``), diagonal in real space with the
stencil's symbol ``g(x) = Π_a (2 + cos(2π x_a/D))/3``; the prior is diagonal there too, ``1/(τ² w(x))``.
So the posterior is diagonal in real space, and with ``s = nτ² = 27/8 · A_jj τ²``, ``h = s g w/(s g w + 1)``
(averages over the box's voxels ``x``, Parseval):

- the exact marginal variance of ``θ_j`` is ``τ² · mean[w/(s g w + 1)]`` (``w ≡ 1``: the mean-field
  ``1/(A_jj + 1/τ²)`` times ``κ``, 1 where the prior dominates, ``(8/27)·3^{3/2} ≈ 1.54`` where the data do);
- the posterior mean ``m`` of a voxel whose true coefficients have power ``τ₀²`` with the envelope ``w``
  has ``E m² = τ₀² · mean[w h²] + τ² · mean[h²/(s g)]``: the method of moments for ``τ²``.
"""

from __future__ import annotations

import math

import torch

from ..imaging.fft import ifft3_centered
from ..imaging.grids import gaussian_blur_3d
from .variational import hermitian_complete

LOG_S = (math.log(1e-4), math.log(1e9), 261)  # the table's grid of log s


def stencil_symbol(d: int, device=None) -> torch.Tensor:
    """``(D, D, D)`` float64 ``g(x) = Π_a (2 + cos(2π x_a/D))/3`` (``x`` px from the centre): the trilinear
    Gram stencil's transform, in real space (module docstring)."""
    g1 = (2 + torch.cos(2 * math.pi * (torch.arange(d, dtype=torch.float64, device=device) - d // 2) / d)) / 3
    return g1[:, None, None] * g1[None, :, None] * g1[None, None, :]


class EnvelopeTable:
    """The stationary model's averages (module docstring) for an envelope ``w (D, D, D)`` (None: 1),
    tabulated on a grid of ``log s``: :meth:`variance` and :meth:`moments`."""

    def __init__(self, d: int, envelope: torch.Tensor | None = None):
        g = stencil_symbol(d).reshape(-1)
        w = torch.ones_like(g) if envelope is None else envelope.double().reshape(-1).cpu()
        w = w / w.mean()
        self.log_s = torch.linspace(*LOG_S, dtype=torch.float64)
        rows = []
        for s in self.log_s.exp():
            sgw = s * g * w
            h = sgw / (sgw + 1)
            rows.append(torch.stack([(w / (sgw + 1)).mean(), (h.square() / (s * g)).mean(), (w * h.square()).mean()]))
        self.table = torch.stack(rows, 1)
        self.inverse_mean = float((1 / w).mean())

    def _lookup(self, s: torch.Tensor, row: int) -> torch.Tensor:
        x = s.double().clamp(min=1e-300).log().clamp(float(self.log_s[0]), float(self.log_s[-1]))
        pos = (x - self.log_s[0]) / (self.log_s[1] - self.log_s[0])
        lo = pos.floor().long().clamp(0, len(self.log_s) - 2)
        t = pos - lo
        k = self.table[row].to(x.device)
        return k[lo] * (1 - t) + k[lo + 1] * t

    def variance(self, a: torch.Tensor, tau2: torch.Tensor) -> torch.Tensor:
        """The exact marginal variance per real coordinate (shape of ``a``) from the data precision ``a``
        (``A_jj``) and the prior power ``tau2`` (same shape)."""
        return tau2 * self._lookup(27 / 8 * a * tau2, 0)

    def moments(self, a: torch.Tensor, tau2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c₁, c₂)``: ``E m² = τ₀² c₂ + c₁`` for the posterior mean at the working ``tau2`` (module
        docstring), so ``τ₀² = (m² − c₁)/c₂``."""
        s = 27 / 8 * a * tau2
        return tau2 * self._lookup(s, 1), self._lookup(s, 2)


def coupling_factor(ratio: torch.Tensor, d: int = 48) -> torch.Tensor:
    """``κ(r)``: the exact marginal variance over the mean-field ``1/(A_jj + 1/τ²)`` at ``r = A_jj τ²`` with
    no envelope, on a ``D³`` periodic lattice (module docstring)."""
    ratio = torch.as_tensor(ratio, dtype=torch.float64)
    return EnvelopeTable(d).variance(ratio, torch.ones_like(ratio)) * (ratio + 1)


def prior_energy(x: torch.Tensor, tau2: torch.Tensor, envelope: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``½ θᵀ Λ θ`` (scalar) for the means ``x (D, D, D, 2)`` (real, imaginary) on the ``free`` voxels, the
    per-voxel power ``tau2 (D, D, D)`` and the envelope ``(D, D, D)`` of mean 1 (module docstring):
    ``(D³/4) Σ_x |F⁻¹[θ/τ](x)|² / w(x)`` over the Friedel-completed grid, which for ``w ≡ 1`` is
    ``½ Σ θ²/τ²`` over the coordinates (the zero frequency's counts half)."""
    d = x.shape[0]
    scaled = torch.view_as_complex(x.contiguous()) / tau2.sqrt()
    m = ifft3_centered(hermitian_complete(scaled, free))
    return 0.25 * d**3 * (m.abs().square() / envelope).sum()


def support_envelope(volume: torch.Tensor, blur_px: float = 2.0, level: float = 0.1, dilate_px: float = 2.0,
                     floor: float = 0.02) -> torch.Tensor:
    """``(D, D, D)`` float64 envelope of mean 1 from a map ``(D, D, D)``: the map smoothed by a Gaussian of
    ``blur_px``, kept where above ``level`` of its maximum, that support widened by a Gaussian of
    ``dilate_px`` (a soft edge), and ``floor`` everywhere else."""
    blurred = gaussian_blur_3d(volume.double(), blur_px)
    support = (blurred > level * float(blurred.max())).double()
    soft = (2 * gaussian_blur_3d(support, dilate_px)).clamp(0, 1)
    w = floor + (1 - floor) * soft
    return w / w.mean()

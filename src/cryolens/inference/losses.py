"""Loss terms of learned methods: the Gaussian image likelihood on a Hartley slice lattice (with the
CTF and shift of the forward model), the closed-form KL of a diagonal Gaussian to N(0, I), and the
reparametrised sample.

**Likelihood.** Model (docs/ARCHITECTURE.md): ``X̃ = CTF ⊙ ramp_t ⊙ P_R Ṽ(z) + N``. Undoing the shift on the
image (``ramp_t`` has modulus 1, so ``|X̃ − C·ramp_t·P| = |X̃·conj(ramp_t) − C·P|``) and taking the
Hartley transform of the centred image ``Y = Re − Im`` of ``X̃·conj(ramp_t)`` gives
``Y = C ⊙ H_R(z) + N_H``, where ``H_R`` is the Hartley slice (the CTF is real and even, so it
multiplies Hartley values as it multiplies Fourier ones). For white noise of power ``σ²`` per Fourier
component, ``Σ_k (Y − C·H)²`` over a ``±k``-symmetric pixel set equals ``Σ_k |X̃·conj(ramp) − C·P|²``
(the cross terms ``Re·Im`` cancel between ``k`` and ``−k``), so the negative log-likelihood is
``Σ (Y − C·H)² / (2σ²)`` up to a constant: cryoDRGN's mean squared error on the lattice is this with
``σ²`` absorbed in the weight of the KL term.

**Symmetrized loss** (cryoAI, Levy et al. 2022; review §3.3.1). An amortized pose encoder can settle in a
local minimum where, for part of the images, the pose is right only up to an in-plane rotation by π (the
map then grows a spurious planar symmetry). The symmetrized loss takes per image the smaller of the error
of the image ``Y`` and of its π-rotated copy ``R_π Y`` (:func:`~cryolens.imaging.grids.flip_centered`),
each explained by its own pose: ``min(ℓ(Y), ℓ(R_π Y))``, where ``ℓ`` infers the pose of the image it is
given, renders it and compares (cryoAI's code: the encoder runs on both copies). For a fixed pose ``(R, t)``
the second branch is the error of the original image under ``(R Rz(π), −t)``
(:func:`~cryolens.imaging.rotations.inplane_pi_pose`), the review's form of the same idea.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..imaging.ctf import CTFParams, ctf_from_freqs
from ..imaging.fft import fft2_centered
from ..imaging.grids import flip_centered
from ..imaging.shift import phase_shift
from ..volumes.lattice import SliceLattice


def centered_hartley(images: torch.Tensor, shifts: torch.Tensor | None = None) -> torch.Tensor:
    """Hartley transforms ``(B, D, D)`` of ``images (B, D, D)`` real after moving the particle centre to the
    image centre (``shifts (B, 2)`` px, docs/CONVENTIONS.md: the phase ramp of ``−shift``)."""
    x = images if images.dtype == torch.float64 else images.float()
    f = fft2_centered(x)
    if shifts is not None:
        f = phase_shift(f, -shifts.to(x.dtype))
    return f.real - f.imag


def ctf_on_lattice(params: CTFParams, lattice: SliceLattice, pixel_size: float) -> torch.Tensor:
    """``(B, P)`` CTF values (RELION's formula) at the lattice's pixels, ``pixel_size`` Å/px."""
    freqs = lattice.freqs[:, :2].double() / pixel_size  # cycles/px ÷ Å/px = 1/Å
    return ctf_from_freqs(freqs, params.to(device=freqs.device, dtype=torch.float64)).float()


def image_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error ``(B,)`` over the last axis (module docstring: the Gaussian
    negative log-likelihood in Hartley space up to ``1/(2σ²)`` and a constant)."""
    dtype = torch.promote_types(torch.promote_types(predicted.dtype, target.dtype), torch.float32)
    return (predicted.to(dtype) - target.to(dtype)).square().mean(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, diag e^{logvar}) ‖ N(0, I))`` per row ``(B,)``, closed form
    ``½ Σ (e^{logvar} + μ² − 1 − logvar)``. ``mu, logvar: (B, L)``."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (logvar.exp() + mu.square() - 1 - logvar).sum(-1)


def reparametrize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z = μ + e^{logvar/2} ε``, ``ε ~ N(0, I)`` (differentiable in ``μ`` and ``logvar``)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def symmetrized_loss(images: torch.Tensor,
                     image_error: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``min(ℓ(Y), ℓ(R_π Y))`` (module docstring) and which branch won.

    images: ``(B, D, D)`` real space ``[n, y, x]``. image_error: ``(B', D, D) → (B',)`` per-image error of
    images it is given (pose inference, rendering and comparison inside; it is called once on the ``2B``
    images ``[Y; R_π Y]``, so batch statistics see both copies). Returns ``(loss (B,), pi (B,) bool)``:
    ``pi`` is true where the π-rotated branch was smaller. The gradient flows through the smaller branch."""
    b = images.shape[0]
    err = image_error(torch.cat([images, flip_centered(images)])).reshape(2, b)
    loss, branch = err.min(dim=0)
    return loss, branch.bool()

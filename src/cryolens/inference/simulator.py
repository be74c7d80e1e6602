"""The simulator-in-the-loop generator of the adversarial recipes (CryoGAN, Multi-CryoGAN): the physics
is the generator, and nothing is inferred per image.

:class:`PhysicsGenerator` draws ``n`` fake particle images from a volume model through the framework's forward
model (:class:`~cryolens.imaging.forward.ImageForward`: the model's real-space map ``maps(z) → (B, D, D, D)``,
differentiable, projected by the oversampled Fourier slice (the simulator's projector, the default) or by
rotating and summing, then shifted and CTF-modulated): every nuisance variable comes from a prior,

- rotations (image → volume frame) uniform on SO(3) (:func:`~cryolens.imaging.rotations.random_rotations`),
  or drawn from a given set of rotations (an empirical angular distribution);
- conformations ``z ~ N(0, I)`` when the model has a latent (``zdim > 0``: one map per image);
- shifts uniform in ``[−max_shift, max_shift]²`` px;
- CTFs: rows of the dataset's own CTF parameters, drawn with replacement;
- noise: white Gaussian of a given real-space σ (measured on the data, e.g.
  :func:`~cryolens.imaging.noise.background_sigma`; optionally learned from there on, ``learn_noise``), or
  whole background patches of real images (rows of ``noise_patches``, drawn with replacement) added as
  they are.

Randomness comes from torch's global generator, which the training engine seeds and checkpoints, so a
run is reproducible and resumes bit for bit. Shapes: images ``(n, D, D)`` float32 real space ``[n, y, x]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..imaging.ctf import CTFParams
from ..imaging.forward import ImageForward
from ..imaging.rotations import random_rotations


class PhysicsGenerator(nn.Module):
    """Fake images from ``volume`` (a model with ``maps(z) → (B, D, D, D)`` differentiable real-space maps,
    ``box_size`` and ``zdim``; module docstring). projector: ``"fourier"`` or ``"real"``. pixel_size: Å/px.
    ctf: the dataset's parameters
    ``(N,)`` or None (no CTF). noise_sigma: real-space σ of white noise (images' units). noise_patches:
    ``(M, D, D)`` background patches used instead of white noise. rotations: ``(K, 3, 3)`` the pose prior
    as a set to draw from (None: uniform on SO(3)). max_shift: px. learn_noise: the white noise's σ becomes a
    parameter (``log σ``, started at ``noise_sigma``) that the adversarial loss trains with the volume."""

    def __init__(self, volume: nn.Module, pixel_size: float, ctf: CTFParams | None, noise_sigma: float,
                 noise_patches: torch.Tensor | None = None, rotations: torch.Tensor | None = None,
                 max_shift: float = 0.0, projector: str = "fourier", learn_noise: bool = False):
        super().__init__()
        self.volume, self.pixel_size = volume, float(pixel_size)
        self.ctf, self.noise_sigma, self.max_shift = ctf, float(noise_sigma), float(max_shift)
        self.forward_model = ImageForward(projector)
        self.register_buffer("noise_patches", None if noise_patches is None else noise_patches.float())
        self.register_buffer("pose_bank", None if rotations is None else rotations.float())
        self.log_noise = nn.Parameter(torch.tensor(math.log(max(self.noise_sigma, 1e-12)))) if learn_noise else None

    def sigma(self) -> torch.Tensor | float:
        """The white noise's σ: ``exp(log_noise)`` when learned (a 0-d tensor), else ``noise_sigma``."""
        return self.noise_sigma if self.log_noise is None else self.log_noise.exp()

    def noise_level(self) -> float:
        """The white noise's σ as a number (images' units; the learned one when ``learn_noise``)."""
        return self.noise_sigma if self.log_noise is None else float(self.log_noise.detach().exp())

    def nuisance(self, n: int, device: torch.device) -> dict[str, Any]:
        """One draw of every nuisance variable for ``n`` images: ``rotation (n, 3, 3)``, ``shift (n, 2)`` px,
        ``ctf`` (``n`` rows of the dataset's, or None) and ``z (n, L)`` (None for a homogeneous model)."""
        if self.pose_bank is None:
            rot = random_rotations(n, device=device)
        else:
            rot = self.pose_bank[torch.randint(len(self.pose_bank), (n,))].to(device)
        shift = (2 * torch.rand(n, 2) - 1).to(device) * self.max_shift
        ctf = None if self.ctf is None else self.ctf[torch.randint(len(self.ctf), (n,))].to(device)
        zdim = int(getattr(self.volume, "zdim", 0))
        z = torch.randn(n, zdim).to(device) if zdim else None
        return {"rotation": rot, "shift": shift, "ctf": ctf, "z": z}

    def clean(self, nuisance: dict[str, Any]) -> torch.Tensor:
        """Noiseless images ``(n, D, D)`` at the given nuisance variables (differentiable in the volume)."""
        rot, shift, ctf, z = nuisance["rotation"], nuisance["shift"], nuisance["ctf"], nuisance["z"]
        maps = self.volume.maps(z)
        if z is None:  # one map for every image
            return self.forward_model(maps[0], rot, shift, ctf, self.pixel_size)
        return torch.cat([self.forward_model(maps[i], rot[i:i + 1], shift[i:i + 1], None if ctf is None else
                                             ctf[i:i + 1], self.pixel_size) for i in range(len(maps))])

    def noise(self, n: int, size: int, device: torch.device) -> torch.Tensor:
        """``(n, D, D)`` noise: background patches if given, else white Gaussian of σ ``noise_sigma``."""
        if self.noise_patches is not None:
            return self.noise_patches[torch.randint(len(self.noise_patches), (n,))].to(device)
        return torch.randn(n, size, size).to(device) * self.sigma()

    def draw(self, n: int) -> tuple[torch.Tensor, CTFParams | None]:
        """``n`` fake images ``(n, D, D)`` (:meth:`forward`) and the CTFs they were drawn with."""
        device = next(self.volume.parameters()).device
        nuisance = self.nuisance(n, device)
        images = self.clean(nuisance)
        return images + self.noise(n, images.shape[-1], device), nuisance["ctf"]

    def forward(self, n: int) -> torch.Tensor:
        """``n`` fake images ``(n, D, D)``: projections at prior draws, shifted, CTF-modulated, plus noise."""
        return self.draw(n)[0]


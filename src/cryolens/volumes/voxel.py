"""A learnable voxel grid in Fourier space answering the neural field's interface.

``forward(coords (B, M, 3) cycles/px, z=None) → (B, M)`` Hartley values, trilinearly interpolated from
a complex ``(D, D, D)`` centered transform (the :func:`~cryolens.imaging.slice.sampling_volume` layout);
queries are folded onto the canonical half-space and conjugated (Friedel), so the map stays real.
Homogeneous only (``z`` is ignored). :class:`RealVoxelVolume` is the real-space twin (density voxels,
real-space projection). Both are :class:`~cryolens.volumes.protocol.VolumeModel` s; the real-space one is
also a :class:`~cryolens.volumes.protocol.RealSpaceProjector`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from ..imaging.fft import fft3_centered, ifft3_centered
from ..imaging.project import project_real
from ..imaging.slice import sampling_volume
from .neural import canonical_half


def sample_fourier(volume_ft: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``(B, M)`` complex of a centered ``(D, D, D)`` transform at ``coords (B, M, 3)``
    cycles/px, folded onto the canonical half-space and conjugated (Friedel); zero at ``|k| ≥ ½``."""
    d = volume_ft.shape[-1]
    up = canonical_half(coords)
    c = torch.where(up[..., None], coords, -coords)
    sv = sampling_volume(volume_ft)  # (1, 2, D+1, D+1, D+1)
    grid = (2.0 / d) * (c * d + d // 2) - 1  # grid index c·D + D/2 → [−1, 1] over D+1 samples
    out = F.grid_sample(sv, grid.reshape(1, 1, 1, -1, 3).to(sv.dtype), mode="bilinear",
                        padding_mode="border", align_corners=True)[0, :, 0, 0].reshape(2, *coords.shape[:-1])
    inside = coords.norm(dim=-1) < 0.5
    return torch.complex(out[0] * inside, torch.where(up, out[1], -out[1]) * inside)


class FourierGridModel(nn.Module, ABC):
    """A homogeneous volume held as a centered ``(D, D, D)`` complex transform, :meth:`grid`: its values
    (:func:`sample_fourier`), Hartley values and real-space map. Subclasses define :meth:`grid` (an abstract
    method: the class itself cannot be instantiated)."""

    box_size: int
    zdim: int = 0

    @abstractmethod
    def grid(self) -> torch.Tensor:
        """The centered transform ``(D, D, D)`` complex the values are read from."""

    def fourier(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex values ``(B, M)`` at ``coords (B, M, 3)`` cycles/px; zero at ``|k| ≥ ½``."""
        return sample_fourier(self.grid(), coords)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        f = self.fourier(coords, z)
        return f.real - f.imag

    def hartley(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Hartley values ``(B, M)`` (:meth:`forward` under its protocol name)."""
        return self(coords, z)

    def render(self, z: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """The real-space map ``(1, D, D, D)`` (real part of the inverse centered transform)."""
        return ifft3_centered(self.grid().detach())[None].real.float()


class VoxelVolume(FourierGridModel):
    """``(D, D, D)`` complex Fourier coefficients as a parameter (``(D, D, D, 2)`` real), initialised from
    ``volume`` (a real-space map ``[z, y, x]``) or zeros."""

    def __init__(self, box_size: int, volume: torch.Tensor | None = None):
        super().__init__()
        d = int(box_size)
        ft = torch.zeros(d, d, d, dtype=torch.complex64) if volume is None else fft3_centered(volume.float())
        self.box_size, self.zdim = d, 0
        self.ft = nn.Parameter(torch.view_as_real(ft.to(torch.complex64)).clone())

    def grid(self) -> torch.Tensor:
        return torch.view_as_complex(self.ft)


class RealVoxelVolume(nn.Module):
    """A learnable real-space voxel grid (CryoPoseNet's decoder): ``density (D, D, D)`` ``[z, y, x]`` as a
    parameter, initialised from ``volume`` or zeros. ``project(rotations (B, 3, 3)) → (B, D, D)``: the
    real-space projection :func:`~cryolens.imaging.project.project_real` (trilinear sampling, sum along
    the beam; differentiable in the density and the rotations). ``render() → (1, D, D, D)``."""

    def __init__(self, box_size: int, volume: torch.Tensor | None = None):
        super().__init__()
        d = int(box_size)
        self.box_size, self.zdim = d, 0
        init = torch.zeros(d, d, d) if volume is None else volume.detach().float().clone()
        self.density = nn.Parameter(init)

    def project(self, rotations: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return project_real(self.density, rotations)

    def maps(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """The density ``(1, D, D, D)``, differentiable (``render`` detached)."""
        return self.density[None]

    def fourier(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex values ``(B, M)`` at ``coords (B, M, 3)`` cycles/px, trilinear in the centered transform
        of the density (:func:`sample_fourier`; the values of a :class:`VoxelVolume` made from it)."""
        return sample_fourier(fft3_centered(self.density), coords)

    def hartley(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Hartley values ``(B, M)`` at ``coords (B, M, 3)`` cycles/px."""
        f = self.fourier(coords, z)
        return f.real - f.imag

    def render(self, z: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        return self.density.detach()[None].float()

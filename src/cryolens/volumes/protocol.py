"""The volume model: what every parametrization of ``V(z)`` answers (docs/ARCHITECTURE.md, "Interfaces").

A volume model is a function of a 3D frequency and a conformation ``z``. Coordinates follow
docs/CONVENTIONS.md: frequencies in cycles/px, ``(kx, ky, kz)`` in the volume frame, ``[−½, ½)`` inside
Nyquist, on the centered layout (index ``i`` ↔ ``(i − D//2) / D``); a central slice of an image rotated by
``R`` (image → volume frame) samples ``R · [kx, ky, 0]ᵀ``. Values are those of the unnormalised centered
transform of the real-space map, so a slice is the 2D transform of the map's projection. The Hartley value
is ``H = Re F − Im F``.

- :class:`VolumeModel`: ``hartley(coords (B, M, 3), z (B, L) | None) → (B, M)`` float32 Hartley values,
  ``fourier(coords, z) → (B, M)`` complex64 Fourier values (``F(−k) = conj F(k)``: the map is real), and
  ``render(z) → (B, D, D, D)`` float32 real-space maps ``[z, y, x]`` in the images' units, one per row of
  ``z`` (``z = None``: one map, ``B = 1``). ``box_size`` is ``D``; ``zdim`` is ``L`` (0: homogeneous,
  ``z`` ignored).
- :class:`RealSpaceProjector`: a model that also projects itself in real space
  (``project(rotations (B, 3, 3), z) → (B, D, D)``, ``image(x, y) = Σ_z V(R·[x, y, z]ᵀ)`` in voxel steps),
  as a Gaussian mixture does analytically and a real-space voxel grid does by rotating and summing.

Implementations: :class:`~cryolens.volumes.neural.NeuralField` (cryoDRGN's MLP),
:class:`~cryolens.volumes.voxel.VoxelVolume` (Fourier voxels),
:class:`~cryolens.volumes.variational.VariationalVoxelVolume` (Fourier voxels with a Gaussian posterior; its
posterior mean answers), :class:`~cryolens.volumes.voxel.RealVoxelVolume` (real-space voxels; also a
:class:`RealSpaceProjector`) and :class:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume` (Gaussians
moved by ``z``; closed-form transform and projection, also a :class:`RealSpaceProjector`).
Both protocols are ``runtime_checkable``: ``isinstance(x, VolumeModel)`` checks the methods are there.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VolumeModel(Protocol):
    """``V(k, z)`` (module docstring). box_size: ``D`` (px). zdim: ``L`` (0 = homogeneous)."""

    box_size: int
    zdim: int

    def hartley(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Hartley values ``(B, M)`` float32 at ``coords (B, M, 3)`` cycles/px, conformations ``z (B, L)``."""
        ...

    def fourier(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex Fourier values ``(B, M)`` at ``coords (B, M, 3)`` cycles/px (zero at ``|k| ≥ ½``
        for grid models; never trained there for a neural field)."""
        ...

    def render(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Real-space maps ``(B, D, D, D)`` float32 ``[z, y, x]`` (``B = 1`` when ``z`` is None)."""
        ...


@runtime_checkable
class RealSpaceProjector(Protocol):
    """A volume that projects itself in real space (module docstring)."""

    def project(self, rotations: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Projections ``(B, D, D)`` float32 ``[n, y, x]`` under ``rotations (B, 3, 3)`` (image → volume
        frame), in voxel units summed along the beam."""
        ...


def render_one(volume: VolumeModel, z: torch.Tensor | None = None) -> torch.Tensor:
    """The single map ``(D, D, D)`` of ``volume`` at ``z (1, L)`` (or ``None``: a homogeneous model)."""
    return volume.render(z)[0]

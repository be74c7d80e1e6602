"""Parametrizations of the volume ``V(z)``.

- :mod:`~cryolens.volumes.encoding`: positional encodings of 3D frequency coordinates (geometric
  sin/cos up to Nyquist; Gaussian random features).
- :mod:`~cryolens.volumes.mlp`: the residual MLP shared by decoders and encoders.
- :mod:`~cryolens.volumes.lattice`: the 2D slice lattice inside the Nyquist circle split into Friedel
  halves, and Hartley ↔ Fourier conversions.
- :mod:`~cryolens.volumes.neural`: the implicit neural field ``(B, M, 3) coords, (B, L) z → (B, M)``
  Hartley values, central slices, and ``render(z, D) → (D, D, D)`` real-space maps.
- :mod:`~cryolens.volumes.gaussian_mixture`: ``N`` Gaussians whose centres (and amplitudes) move with ``z``
  through a decoder; closed-form transform and real-space projection; built from an atomic model or fitted
  to a map.
- :mod:`~cryolens.volumes.protocol`: the interface every parametrization answers
  (:class:`~cryolens.volumes.protocol.VolumeModel`, optional real-space projection).
- :mod:`~cryolens.volumes.deformation`: 3DFlex's canonical density convected along a flow that an MLP
  computes from ``z`` on a coarse mesh, with the mesh's rigidity and smoothness terms.
- :mod:`~cryolens.volumes.voxel`: a learnable voxel grid answering the same interface (Fourier), and a
  real-space voxel grid with real-space projection (CryoPoseNet).
"""

from .encoding import PositionalEncoding
from .gaussian_mixture import GaussianMixtureVolume
from .lattice import SliceLattice, flip_frequencies, fourier_to_hartley, hartley_to_fourier
from .mlp import ResidualMLP
from .neural import NeuralField
from .protocol import RealSpaceProjector, VolumeModel, render_one
from .voxel import RealVoxelVolume, VoxelVolume

__all__ = ["GaussianMixtureVolume", "NeuralField", "PositionalEncoding", "RealSpaceProjector", "RealVoxelVolume",
           "ResidualMLP", "SliceLattice", "VolumeModel", "VoxelVolume", "flip_frequencies", "fourier_to_hartley",
           "hartley_to_fourier", "render_one"]

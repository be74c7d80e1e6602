"""3DFlex's volume (Punjani & Fleet 2023; docs/METHODS.md "3DFlex"): a canonical real-space density
``V0`` convected along a flow that a generator computes from ``z``.

- The **mesh** is a regular grid of ``n`` cells per axis spanning the box (vertices as in
  :mod:`cryolens.imaging.convect`); the flow is given at its ``(n+1)³`` vertices and interpolated
  trilinearly to every point. Each cube is split into the six Kuhn tetrahedra (those along the main
  diagonal) on which the structure terms are measured.
- :class:`FlowGenerator`: an MLP ``z (B, L) → flow (B, 3, n+1, n+1, n+1)`` px; its last layer starts
  small, so training starts near the undeformed canonical map.
- :class:`DeformedVolume`: ``V0 (D, D, D)`` as a parameter and the generator; ``render(z)`` the convected
  maps, ``project(rotations, z)`` their real-space projections (a
  :class:`~cryolens.volumes.protocol.RealSpaceProjector`), ``fourier`` / ``hartley`` from the rendered maps
  (a :class:`~cryolens.volumes.protocol.VolumeModel`).
- :func:`rigidity`: per tetrahedron ``‖FᵀF − I‖²_F`` with ``F`` the Jacobian of the map deformed frame →
  canonical frame ``x ↦ x − u(x)`` on that tetrahedron (zero exactly when it moves rigidly), averaged
  with per-cell weights (the density inside each cell). :func:`smoothness`: the mean squared second
  difference of the vertex displacements along each axis (zero for any affine flow).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ..imaging.convect import convect, project_convected, voxel_points
from ..imaging.fft import fft3_centered
from .voxel import sample_fourier


def vertex_positions(cells: int, box_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Rest positions ``(3, n+1, n+1, n+1)`` px ``(x, y, z)`` of the mesh vertices, indexed ``[c, kz, ky, kx]``."""
    a = -box_size / 2 + torch.arange(cells + 1, device=device, dtype=dtype) * (box_size / cells)
    z, y, x = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([x, y, z])


_KUHN = list(itertools.permutations(range(3)))  # one tetrahedron per order of the axes


def tetra_jacobians(positions: torch.Tensor, cell_size: float) -> torch.Tensor:
    """``(B, 6, n, n, n, 3, 3)`` Jacobians of the piecewise-linear map that sends the rest mesh (cubes of
    edge ``cell_size`` px) to vertex ``positions (B, 3, n+1, n+1, n+1)`` px, one per Kuhn tetrahedron of
    every cube: ``F = [p1 − p0, p2 − p0, p3 − p0] · E⁻¹`` with ``E`` the tetrahedron's rest edges."""
    n = positions.shape[-1] - 1

    def corner(o):  # the vertex at offset o = (ox, oy, oz) of every cube, (B, n, n, n, 3)
        return _corner(positions, o, n).permute(0, 2, 3, 4, 1)

    p0 = corner((0, 0, 0))
    out = []
    for perm in _KUHN:
        offs, o = [], [0, 0, 0]
        for axis in perm:
            o[axis] = 1
            offs.append(tuple(o))
        edges = torch.stack([corner(o) - p0 for o in offs], dim=-1)  # columns p_k − p0
        rest = torch.tensor(offs, dtype=positions.dtype, device=positions.device).T * cell_size
        out.append(edges @ torch.linalg.inv(rest))
    return torch.stack(out, dim=1)


def rigidity(flow: torch.Tensor, box_size: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` weighted mean over tetrahedra of ``‖FᵀF − I‖²_F`` (module docstring) for ``flow
    (B, 3, n+1, n+1, n+1)`` px; ``weights (n, n, n)`` per cell ``[z, y, x]`` (e.g. the density inside each
    cell, normalised to mean 1), uniform if ``None``.

    Computed from the cube edges, not from :func:`tetra_jacobians` (the same value to rounding): on the Kuhn
    tetrahedron of axis order ``(a, b, c)`` the column ``a`` of ``F`` is the cube's edge along ``a`` from the
    cube's origin divided by the cell size, column ``b`` the edge along ``b`` from there, column ``c`` the
    edge along ``c`` after both; so ``‖FᵀF − I‖² = Σ_a (|F_a|² − 1)² + 2 Σ_{a<b} (F_a · F_b)²`` with no 3 × 3
    matrix products (elementwise over the ``(B, 3, n, n, n)`` edge fields)."""
    n = flow.shape[-1] - 1
    pos = vertex_positions(n, box_size, flow.device, flow.dtype) - flow
    diffs = [pos.diff(dim=4 - axis) * (n / box_size) for axis in range(3)]  # edges along x, y, z / cell size
    cache: dict = {}

    def edge(axis: int, o: tuple) -> tuple:  # (column of F, (|column|² − 1)²) of the edge at offset o
        if (axis, o) not in cache:
            col = _corner(diffs[axis], o, n)
            cache[axis, o] = col, (col.square().sum(1) - 1).square()
        return cache[axis, o]

    stretch, shear = 0, 0
    for perm in _KUHN:
        o, cols = [0, 0, 0], []
        for axis in perm:
            cols.append(edge(axis, tuple(o)))
            o[axis] = 1
        stretch = stretch + sum(q for _, q in cols)
        for i, j in ((0, 1), (0, 2), (1, 2)):
            shear = shear + (cols[i][0] * cols[j][0]).sum(1).square()
    w = torch.ones(n, n, n, device=flow.device, dtype=flow.dtype) if weights is None else weights.to(flow.dtype)
    return ((stretch + 2 * shear) * w).sum((1, 2, 3)) / (len(_KUHN) * n**3)


def _corner(field: torch.Tensor, o, n: int) -> torch.Tensor:
    """``field (B, C, ≥n, ≥n, ≥n)`` at offset ``o = (ox, oy, oz)`` of every cube, ``(B, C, n, n, n)`` (a view)."""
    return field[:, :, o[2]:o[2] + n, o[1]:o[1] + n, o[0]:o[0] + n]


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean squared second difference (px²) of ``flow (B, 3, n+1, n+1, n+1)`` along each axis."""
    terms = [flow.diff(n=2, dim=dim).square().mean((1, 2, 3, 4)) for dim in (2, 3, 4)]
    return sum(terms) / 3


def cell_mass(volume: torch.Tensor, cells: int) -> torch.Tensor:
    """``(n, n, n)`` non-negative density of ``volume (D, D, D)`` averaged inside each mesh cell, divided by
    its mean over the cells (all ones for an empty map)."""
    m = F.adaptive_avg_pool3d(volume.detach().clamp(min=0)[None, None], cells)[0, 0]
    return m / m.mean() if float(m.mean()) > 0 else torch.ones_like(m)


class FlowGenerator(nn.Module):
    """``z (B, L) → flow (B, 3, n+1, n+1, n+1)`` px: ``layers`` hidden ReLU layers of ``hidden`` units
    (3DFlex's fully connected generator), a linear output layer initialised small (weights of std
    ``init_std`` px, zero bias: the flow starts near zero but already depends on ``z``)."""

    def __init__(self, zdim: int, cells: int, layers: int = 6, hidden: int = 64, init_std: float = 1e-3):
        super().__init__()
        self.cells = int(cells)
        dims = [int(zdim)] + [int(hidden)] * int(layers)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layer = nn.Linear(a, b)
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # keeps the z-dependence through depth
            nn.init.zeros_(layer.bias)
            blocks += [layer, nn.ReLU()]
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.Linear(dims[-1], 3 * (self.cells + 1) ** 3)
        nn.init.normal_(self.out.weight, std=init_std)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        k = self.cells + 1
        return self.out(self.hidden(z)).reshape(-1, 3, k, k, k)


class _Bound:
    """A :class:`DeformedVolume` at fixed flows, with the ``project(rotations)`` that
    :class:`~cryolens.imaging.forward.ProjectorForward` calls."""

    def __init__(self, density: torch.Tensor, flow: torch.Tensor):
        self.density, self.flow = density, flow

    def project(self, rotations: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return project_convected(self.density, self.flow, rotations)


class DeformedVolume(nn.Module):
    """3DFlex's volume (module docstring). ``density``: ``V0 (D, D, D)`` ``[z, y, x]`` (initialised from
    ``volume`` or zeros); ``generator``: a :class:`FlowGenerator` on a mesh of ``cells`` cells per axis."""

    def __init__(self, box_size: int, zdim: int, cells: int, layers: int = 6, hidden: int = 64,
                 volume: torch.Tensor | None = None):
        super().__init__()
        d = int(box_size)
        self.box_size, self.zdim, self.cells = d, int(zdim), int(cells)
        init = torch.zeros(d, d, d) if volume is None else volume.detach().float().clone()
        self.density = nn.Parameter(init)
        self.generator = FlowGenerator(zdim, cells, layers, hidden)

    def flow(self, z: torch.Tensor) -> torch.Tensor:
        """Vertex displacements ``(B, 3, n+1, n+1, n+1)`` px for ``z (B, L)``."""
        return self.generator(z)

    def at(self, z: torch.Tensor | None = None, flow: torch.Tensor | None = None,
           density: torch.Tensor | None = None) -> _Bound:
        """The volume at conformations ``z`` (or given flows ``(B, 3, n+1, n+1, n+1)``), with
        ``project(rotations)``; ``density``: another canonical map ``(D, D, D)`` in place of ``V0``."""
        return _Bound(self.density if density is None else density, self.flow(z) if flow is None else flow)

    def project(self, rotations: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Real-space projections ``(B, D, D)`` of the maps at ``z (B, L)`` under ``rotations (B, 3, 3)``."""
        return self.at(z).project(rotations)

    def render(self, z: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """Convected maps ``(B, D, D, D)`` (``z = None``: the canonical map, ``B = 1``)."""
        d = self.box_size
        if z is None:
            return self.density.detach()[None].float()
        pts = voxel_points(d, z.shape[0], self.density.device, self.density.dtype)
        return convect(self.density, self.flow(z), pts).reshape(-1, d, d, d)

    def fourier(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex values ``(B, M)`` at ``coords (B, M, 3)`` cycles/px of each row's convected map."""
        maps = self.render(z)
        if maps.shape[0] == 1 and coords.shape[0] > 1:
            maps = maps.expand(coords.shape[0], -1, -1, -1)
        return torch.cat([sample_fourier(fft3_centered(m), c[None]) for m, c in zip(maps, coords)])

    def hartley(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Hartley values ``(B, M)`` at ``coords (B, M, 3)`` cycles/px."""
        f = self.fourier(coords, z)
        return f.real - f.imag

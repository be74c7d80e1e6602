"""The implicit neural volume of cryoDRGN: an MLP on (positional encoding of a 3D frequency, ``z``).

``V_θ(k, z)``: frequencies ``k`` in cycles/px (``(kx, ky, kz)``, volume frame), ``z`` a conformation
vector (``zdim = 0``: homogeneous). Two outputs (cryoDRGN's ``--domain``):

- ``fourier`` (default): two channels ``(Re F, Im F)``, evaluated only on the canonical half-space
  (``kz > 0``, or ``kz = 0, ky > 0``, or ``kz = ky = 0, kx ≥ 0``): a query at ``k`` in the other half
  evaluates ``−k`` and uses ``F(k) = conj F(−k)`` (Friedel symmetry of a real map), so the map is real by
  construction. The Hartley value returned is ``Re F − Im F``.
- ``hartley``: one channel, the Hartley value itself, evaluated at every query. A Hartley transform has
  no Friedel symmetry to exploit (``H(−k) = Re F + Im F ≠ H(k)``), so nothing is halved.

Frequencies outside the Nyquist sphere (``|k| ≥ ½``) are never trained and render as zero.
Units: the network predicts Hartley values of images divided by ``output_scale`` (the data
normalisation); :meth:`NeuralField.render` multiplies it back, so maps come out in the images' units
(unnormalised centered transforms: a slice of the map's 3D transform is the 2D transform of its
projection).
"""

from __future__ import annotations

import torch
from torch import nn

from ..imaging.fft import hartley3, ifft3_centered
from .encoding import PositionalEncoding
from .lattice import SliceLattice, flip_frequencies
from .mlp import ResidualMLP


def canonical_half(coords: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` → ``(...,)`` bool: the point lies in the canonical half-space (module docstring)."""
    kx, ky, kz = coords.unbind(-1)
    return (kz > 0) | ((kz == 0) & ((ky > 0) | ((ky == 0) & (kx >= 0))))


class NeuralField(nn.Module):
    """``forward(coords (B, M, 3) cycles/px, z (B, L) | None) → (B, M)`` Hartley values; a
    :class:`~cryolens.volumes.protocol.VolumeModel`.

    box_size: ``D`` of the training images. zdim: ``L`` (0 = homogeneous). layers, hidden: the residual
    MLP (cryoDRGN: 3 × 1024). pe: ``"gaussian"`` or ``"geometric"`` (:mod:`~cryolens.volumes.encoding`),
    pe_dim: wavenumbers per axis (default ``D//2``), feat_sigma: Gaussian feature scale.
    domain: ``"fourier"`` or ``"hartley"``. seed: of the Gaussian features.
    """

    def __init__(self, box_size: int, zdim: int = 0, layers: int = 3, hidden: int = 1024, pe: str = "gaussian",
                 pe_dim: int | None = None, feat_sigma: float = 0.5, domain: str = "fourier", seed: int = 0):
        super().__init__()
        if domain not in ("fourier", "hartley"):
            raise ValueError(f"domain must be 'fourier' or 'hartley', got {domain!r}")
        self.box_size, self.zdim, self.domain = int(box_size), int(zdim), domain
        self.encoding = PositionalEncoding(box_size, pe, pe_dim, feat_sigma, seed)
        self.mlp = ResidualMLP(self.encoding.out_dim + self.zdim, layers, hidden, 2 if domain == "fourier" else 1)
        self.register_buffer("output_scale", torch.ones(()))

    def _net(self, coords: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Raw network outputs ``(B, M, C)`` at ``coords (B, M, 3)``, ``z (B, L)``: the MLP on
        ``[encoding(k), z]`` (:meth:`~cryolens.volumes.mlp.ResidualMLP.first_layer`)."""
        x = self.encoding(coords)
        if not self.zdim:
            return self.mlp(x)
        if z is None:
            raise ValueError(f"this volume is conditioned on z (zdim={self.zdim}); got z=None")
        # z enters the first layer once per item, not concatenated to each of its M points
        return self.mlp(x, z.to(x.dtype))

    def fourier(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex Fourier values ``(B, M)`` at ``coords (B, M, 3)``. A Hartley-domain field evaluates
        ``H(k)`` and ``H(−k)``: ``F(k) = ½(H(k) + H(−k)) − ½ i (H(k) − H(−k))``."""
        if self.domain != "fourier":
            h, hm = self._net(coords, z)[..., 0].float(), self._net(-coords, z)[..., 0].float()
            return torch.complex(0.5 * (h + hm), -0.5 * (h - hm))
        up = canonical_half(coords)
        c = torch.where(up[..., None], coords, -coords)
        out = self._net(c, z).float()
        im = torch.where(up, out[..., 1], -out[..., 1])
        im = torch.where((coords == 0).all(-1), torch.zeros_like(im), im)  # F(0) of a real map is real
        return torch.complex(out[..., 0], im)

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if self.domain == "hartley":
            return self._net(coords, z)[..., 0]
        f = self.fourier(coords, z)
        return f.real - f.imag

    def hartley(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Hartley values ``(B, M)`` at ``coords (B, M, 3)`` (the
        :class:`~cryolens.volumes.protocol.VolumeModel` name of :meth:`forward`)."""
        return self(coords, z)

    def slices(self, rotations: torch.Tensor, z: torch.Tensor | None, lattice: SliceLattice) -> torch.Tensor:
        """Hartley values ``(B, P)`` of the central slices ``rotations (B, 3, 3)`` on ``lattice``'s pixels.

        Fourier domain: the network runs on the origin and the lattice's half only (``1 + n_half``
        points, each folded onto the canonical 3D half-space as in :meth:`fourier`) and the partners
        follow by Friedel symmetry: ``(1 + n_half) / P ≈ ½`` of the evaluations."""
        if self.domain == "hartley":
            return self._net(lattice.points(rotations, half=False), z)[..., 0]
        f = self.fourier(lattice.points(rotations), z)
        return lattice.hartley_from_half(f.real, f.imag)

    @torch.no_grad()
    def render(self, z: torch.Tensor | None = None, size: int | None = None, chunk: int = 1 << 15) -> torch.Tensor:
        """Real-space maps ``(B, D', D', D')`` float32 ``[z, y, x]`` at ``z (B, L)`` (``None``: one map of
        a homogeneous field). ``size`` ``D' ≤ D`` renders the frequencies ``|k| < D'/(2D)`` only (a
        Fourier crop: a map of pixel size ``× D/D'``). Evaluated in chunks of ``chunk`` points."""
        d, size = self.box_size, int(size or self.box_size)
        if size > d or size % 2:
            raise ValueError(f"render size must be even and ≤ the training box {d}, got {size}")
        dev = self.output_scale.device
        b = 1 if z is None else z.shape[0]
        a = (torch.arange(size, device=dev, dtype=torch.float32) - size // 2) / d
        kz, ky, kx = torch.meshgrid(a, a, a, indexing="ij")
        grid = torch.stack([kx, ky, kz], -1).reshape(-1, 3)
        inside = torch.nonzero(grid.norm(dim=-1) * d < size / 2).reshape(-1)
        pts = grid[inside]  # the sphere is closed under k → −k (the −Nyquist planes lie outside it)
        maps = []
        for i in range(b):
            zi = None if z is None else z[i:i + 1].to(dev)
            if self.domain == "fourier":
                # only the canonical half-space is evaluated; the rest is F(−k) = conj F(k)
                canon = inside[canonical_half(grid[inside])]
                pts_c = grid[canon]
                vals = torch.cat([self.fourier(pts_c[s:s + chunk][None], zi)[0] for s in range(0, len(pts_c), chunk)])
                ft = torch.zeros(size ** 3, dtype=torch.complex64, device=dev)
                ft[canon] = vals
                ft = ft.reshape(size, size, size)
                is_canon = torch.zeros(size ** 3, dtype=torch.bool, device=dev)
                is_canon[canon] = True
                ft = torch.where(is_canon.reshape(ft.shape), ft, flip_frequencies(ft, (-3, -2, -1)).conj())
                vol = ifft3_centered(ft).real
            else:
                vals = torch.cat([self(pts[s:s + chunk][None], zi)[0] for s in range(0, len(pts), chunk)])
                h = torch.zeros(size ** 3, dtype=torch.float32, device=dev)
                h[inside] = vals.float()
                vol = hartley3(h.reshape(size, size, size)) / size ** 3
            # a D'³ inverse of a D³-normalised transform: × (D'/D)³ keeps the map's real-space values
            maps.append(vol * self.output_scale * (size / d) ** 3)
        return torch.stack(maps).float()

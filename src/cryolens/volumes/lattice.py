"""The 2D slice lattice of a neural volume and Hartley ↔ Fourier conversions.

The lattice is the set of pixels of a ``D × D`` centered image whose frequency lies strictly inside
the Nyquist circle, ``|f| · D < D/2`` (cryoDRGN's circular mask of radius ``D/2``). That set is closed
under ``f → −f``, so it splits into the origin, a canonical half (``ky > 0``, or ``ky = 0`` and
``kx > 0``) and the partners of the half. A real volume has ``F(−k) = conj F(k)``, so a network that
outputs ``(Re F, Im F)`` is evaluated on the origin and the half only: the Hartley values are
``H(k) = Re F(k) − Im F(k)`` on the half and ``H(−k) = Re F(k) + Im F(k)`` on the partners.

Conversions on a full centered grid (index ``i`` ↔ frequency ``(i − D//2)/D``; the partner of index
``i`` is ``(D − i) mod D``, so ``−Nyquist`` is its own partner, periodically):
``H = Re F − Im F`` and ``F(k) = ½(H(k) + H(−k)) − ½ i (H(k) − H(−k))``.
"""

from __future__ import annotations

import torch

from ..imaging.grids import flip_centered, freq_grid_2d


def flip_frequencies(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x(−k)`` on a centered grid along ``dims`` (index ``i → (D − i) mod D``;
    :func:`~cryolens.imaging.grids.flip_centered`)."""
    return flip_centered(x, dims)


def fourier_to_hartley(f: torch.Tensor) -> torch.Tensor:
    """Hartley values ``Re F − Im F`` of complex Fourier values (any layout, elementwise)."""
    return f.real - f.imag


def hartley_to_fourier(h: torch.Tensor, dims: tuple[int, ...] = (-2, -1)) -> torch.Tensor:
    """Centered transform ``F`` of a real array from its centered Hartley transform ``h`` over ``dims``
    (``(..., D, D)`` images by default; ``(-3, -2, -1)`` for volumes)."""
    hm = flip_frequencies(h, dims)
    return torch.complex(0.5 * (h + hm), -0.5 * (h - hm))


class SliceLattice:
    """The pixels of a ``D × D`` centered image inside the Nyquist circle, ordered
    ``[origin, half (n_half), partners of half (n_half)]`` (module docstring).

    pixels: ``(P,)`` int64 flat indices into ``D·D`` (``P = 1 + 2·n_half``). freqs: ``(P, 3)``
    ``(kx, ky, 0)`` cycles/px. radius: keep ``|f|·D < radius`` (default ``D/2``).
    """

    def __init__(self, size: int, device=None, radius: float | None = None):
        self.size = int(size)
        radius = self.size / 2 if radius is None else float(radius)
        f = freq_grid_2d(self.size, dtype=torch.float64).reshape(-1, 2)
        r = f.norm(dim=-1) * self.size
        kx, ky = f[:, 0], f[:, 1]
        origin = torch.nonzero((kx == 0) & (ky == 0)).reshape(-1)
        half = torch.nonzero((r < radius) & ((ky > 0) | ((ky == 0) & (kx > 0)))).reshape(-1)
        # the partner of flat index y·D + x is ((D − y) mod D)·D + (D − x) mod D
        y, x = half // self.size, half % self.size
        partner = ((self.size - y) % self.size) * self.size + (self.size - x) % self.size
        pixels = torch.cat([origin, half, partner])
        self.n_half = int(half.numel())
        self.pixels = pixels.to(device)
        f3 = torch.cat([f[pixels], torch.zeros(pixels.numel(), 1, dtype=torch.float64)], dim=1)
        self.freqs = f3.float().to(device)

    def __len__(self) -> int:
        return int(self.pixels.numel())

    def to(self, device) -> SliceLattice:
        self.pixels = self.pixels.to(device)
        self.freqs = self.freqs.to(device)
        return self

    def points(self, rotations: torch.Tensor, half: bool = True) -> torch.Tensor:
        """Volume-frame frequencies ``R · f`` ``(B, 1 + n_half, 3)`` of the origin and the half
        (``half=False``: all ``P`` pixels). rotations: ``(B, 3, 3)`` image → volume frame."""
        f = self.freqs[: 1 + self.n_half] if half else self.freqs
        return torch.einsum("pj,bij->bpi", f.to(rotations.dtype), rotations)

    def gather(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D, D)`` centered images → ``(B, P)`` values on the lattice."""
        return images.flatten(-2)[..., self.pixels]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` lattice values → ``(B, D, D)`` images, zero outside the lattice."""
        out = values.new_zeros(*values.shape[:-1], self.size * self.size)
        out[..., self.pixels] = values
        return out.reshape(*values.shape[:-1], self.size, self.size)

    def hartley_from_half(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """Hartley values ``(B, P)`` on the whole lattice from ``(Re F, Im F)`` ``(B, 1 + n_half)`` on the
        origin and the half (the imaginary part at the origin is ignored: a real volume has none)."""
        return torch.cat([re[:, :1], re[:, 1:] - im[:, 1:], re[:, 1:] + im[:, 1:]], dim=1)

"""Reconstruction from weighted central slices: the Fourier accumulator every M-step shares.

``Σ w c X̃`` and ``Σ w c²`` are scattered along each slice's rotation into the ``kx ≥ 0`` half of an oversampled
grid (:mod:`cryolens.imaging.half_grid`: a frequency with ``kx < 0`` goes to its Friedel mate, conjugated; the
transform of a real map needs no other half), completed once when read; the map is ``data / (weight + λ(k))``
with a per-shell regulariser ``λ(k) = W(k) (1 − FSC) / FSC`` (Wiener / MAP with a Gaussian prior whose power is
read off the half-map FSC), made with ``irfftn``. Used by known-pose back-projection and by the EM M-step.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..imaging.grids import spherical_mask
from ..imaging.half_grid import (SLAB, finish_half, half_column_products, half_plane_multiplicity, half_shells,
                                 half_staging_grid, half_staging_shape, half_to_full, n_output_shells, scatter_half,
                                 scatter_half_points, volume_from_half_ft)
from ..imaging.slice import scatter_voxel_major_available
from .distributed import all_reduce_sum, is_distributed
from .prior import wiener_regularisation  # noqa: F401  (its import path for back-projection)


class FourierAccumulator:
    """Running sums ``Σ c X̃`` and ``Σ c²`` of one half-set, kept in a ``kx ≥ 0`` half staging grid
    (:mod:`cryolens.imaging.half_grid`) and completed once when read."""

    def __init__(self, size: int, pad: int, device, dtype=torch.float32):
        self.size, self.padded = size, pad * size
        self._device, self._dtype = torch.device(device or "cpu"), dtype
        # made on first read: a compiled-kernel run keeps its sums voxel-major only (one grid, not two)
        self._staging: torch.Tensor | None = None
        self._voxel_major: torch.Tensor | None = None
        self.count = 0
        self._done: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def staging(self) -> torch.Tensor:
        """The ``(3, (Dp+2)²(Dp/2+2))`` half staging grid (:func:`~cryolens.imaging.half_grid.half_staging_grid`),
        with the sums :meth:`add` keeps voxel-major for the compiled kernel folded in when it is read."""
        if self._staging is None:
            self._staging = half_staging_grid(self.padded, 3, self._device, self._dtype)
        if self._voxel_major is not None:
            self._staging += self._voxel_major.T
            self._voxel_major = None
        return self._staging

    @staging.setter
    def staging(self, grid: torch.Tensor) -> None:
        want = (3, math.prod(half_staging_shape(self.padded)))
        if tuple(grid.shape) != want:  # e.g. a full (Dp+2)³ grid kept by a checkpoint of an older version
            raise ValueError(f"FourierAccumulator: a staging grid of shape {tuple(grid.shape)}, not the half grid "
                             f"{want}")
        self._staging, self._voxel_major = grid, None

    @property
    def device(self) -> torch.device:
        """Where the sums are (reading it does not touch them)."""
        held = self._staging if self._staging is not None else self._voxel_major
        return self._device if held is None else held.device

    def _sums(self) -> torch.Tensor:
        """All sums as a ``(3, (Dp+2)²(Dp/2+2))`` grid to read: the voxel-major grid seen transposed while there is no
        staging grid (no second grid made), else :attr:`staging`."""
        if self._voxel_major is not None and self._staging is None:
            return self._voxel_major.T
        return self.staging

    def add(self, images_ft: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor | None,
            scale: torch.Tensor | None = None) -> None:
        """Insert transforms ``(B, D, D)`` complex of real images (shifts already undone) along
        ``rotations``, weighted by their CTFs ``(B, D, D)`` (or none) and optional per-image
        ``scale (B,)`` (e.g. posterior weights). With the compiled kernel the sums go to a voxel-major grid
        (a voxel's three sums in one cache line), added to :attr:`staging` when that is read."""
        c = torch.ones_like(images_ft.real) if ctf is None else ctf
        if scale is not None:
            s = scale.to(c.dtype)[:, None, None]
            values, weights = images_ft * c * s, c * c * s
        else:
            values, weights = images_ft * c, c * c
        self.add_products(values, weights, rotations)

    def add_products(self, values: torch.Tensor, weights: torch.Tensor, rotations: torch.Tensor) -> None:
        """Insert ``values`` ``Σ c X̃`` ``(B, D, D)`` complex and ``weights`` ``Σ c²`` ``(B, D, D)`` real, already
        formed (e.g. on the half columns only, :func:`~cryolens.imaging.half_grid.half_column_products`; only the
        ``kx ≥ 0`` half columns are read), along ``rotations``."""
        fast = scatter_voxel_major_available(torch.empty(0, dtype=self._dtype, device=self.device), self.padded)
        if fast and self._voxel_major is None:
            self._voxel_major = torch.zeros(math.prod(half_staging_shape(self.padded)), 3, dtype=self._dtype)
        target = self._voxel_major if fast else self.staging
        scatter_half([target], [values], rotations, self.padded, [weights], voxel_major=fast)
        self.count += values.shape[0]
        self._done = None

    @staticmethod
    def add_shared(accs: list[FourierAccumulator], images_ft: torch.Tensor, rotations: torch.Tensor,
                   ctf: torch.Tensor | None, scales: torch.Tensor) -> None:
        """:meth:`add` of the same images along the same rotations into several accumulators (e.g. one
        per class) with per-accumulator weights ``scales (B, len(accs))``; the slice geometry is
        computed once."""
        c = torch.ones_like(images_ft.real) if ctf is None else ctf
        yc, c2 = images_ft * c, c * c
        s = scales.to(c.dtype)
        scatter_half([a.staging for a in accs], [yc * s[:, k, None, None] for k in range(len(accs))],
                     rotations, accs[0].padded, [c2 * s[:, k, None, None] for k in range(len(accs))])
        for k, a in enumerate(accs):
            a.count += int((scales[:, k] != 0).sum())
            a._done = None

    def add_points(self, values: torch.Tensor, weights: torch.Tensor, rotations: torch.Tensor,
                   freqs: torch.Tensor, multiplicity: torch.Tensor) -> None:
        """Insert values at a subset of slice pixels: ``values (B, P)`` complex (``Σ c X̃``) and
        ``weights (B, P)`` real (``Σ c²``) at 2D frequencies ``freqs (P, 2)`` (cycles/px, ``(x, y)``) of
        slices along ``rotations (B, 3, 3)``, each scaled by ``multiplicity (P,)``. For the Hermitian
        completion of :meth:`add` the pixels must be a subset of the ``kx ≥ 0`` half-columns with
        multiplicity ½ on the ``kx = 0`` and ``kx = −Nyquist`` columns, 1 elsewhere (0 beyond Nyquist):
        then it adds exactly what :meth:`add` adds for slices that are zero off those pixels."""
        scatter_half_points([self.staging], [values], [weights], rotations, freqs, multiplicity, self.padded)
        self.count += values.shape[0]
        self._done = None

    def all_reduce(self) -> None:
        """Sum the accumulator over the ranks of a process group, in place (no-op in one process)."""
        if is_distributed():
            count = torch.tensor([float(self.count)], dtype=torch.float64)
            all_reduce_sum(self.staging, count)
            self.count, self._done = int(count), None

    @property
    def data(self) -> torch.Tensor:
        """``Σ c X̃`` on the full centred ``(Dp, Dp, Dp)`` grid (made from the half grid when read: for callers that
        need the whole grid; the maps are made from the half)."""
        return half_to_full(self._finished()[0])

    @property
    def weight(self) -> torch.Tensor:
        """``Σ c²`` on the full centred ``(Dp, Dp, Dp)`` grid (see :attr:`data`)."""
        return half_to_full(self._finished()[1], conjugate=False)

    def has_weight(self) -> bool:
        """Whether any voxel has a nonzero ``Σ c²``."""
        return bool(self._finished()[1].abs().sum() > 0)

    def _finished(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The completed half grids ``(data, weight)``, ``(Dp, Dp, Dp/2+1)`` (:func:`~cryolens.imaging.half_grid.
        finish_half`), kept until the sums change or :meth:`forget_finished`."""
        if self._done is None:
            self._done = finish_half(self._sums(), self.padded)
        return self._done

    def absorb(self, other: FourierAccumulator) -> None:
        """Add ``other``'s sums to this accumulator's, in place (no third grid; ``other`` is left as it is)."""
        if self._staging is None and other._staging is None and self._voxel_major is not None \
                and other._voxel_major is not None:
            self._voxel_major += other._voxel_major
        else:
            self.staging += other.staging
        self.count += other.count
        self._done = None

    def forget_finished(self) -> None:
        """Free the completed ``(data, weight)`` grids kept since the last read (they are made again if read)."""
        self._done = None

    def merged(self, other: FourierAccumulator, sign: float = 1.0) -> FourierAccumulator:
        """A new accumulator holding this one's sums plus ``sign`` × ``other``'s (``sign = -1``: this one's sums
        without ``other``'s, which must be part of them — a leave-fold-out reference)."""
        out = FourierAccumulator.__new__(FourierAccumulator)
        out.size, out.padded, out._device, out._dtype = self.size, self.padded, self.device, self._dtype
        out.staging = self.staging + other.staging if sign == 1.0 else self.staging + sign * other.staging
        out.count, out._done = self.count + int(sign) * other.count, None
        return out

    def reconstruct(self, reg_per_shell: torch.Tensor, inverse_reg_per_shell: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Real ``(D, D, D)`` map of ``data / (weight + λ)`` with the box corners beyond radius ``D/2``
        faded out over 3 voxels (as RELION's reconstruction does: the gridding correction amplifies
        noise there). ``λ = reg_per_shell[k]`` ``(D//2+1,)`` per output shell, plus, when given,
        ``inverse_reg_per_shell[k] / weight`` per voxel (RELION's weak prior where its ``τ²`` is zero,
        see :func:`~cryolens.inference.prior.map_prior`); voxels with no weight and no ``λ`` and voxels beyond
        Nyquist are 0 (their denominator is set to infinity). Works on the half grids, ``SLAB`` planes at a time
        (no grid of temporaries), and divides the completed grids in place: they are forgotten (made again if
        read)."""
        data, w = self._finished()
        self._done = None  # divided in place below
        pad, nyq = self.padded // self.size, self.size // 2
        table = torch.full((n_output_shells(self.padded, pad),), torch.inf, dtype=w.dtype, device=w.device)
        table[:nyq + 1] = reg_per_shell.to(w.device, w.dtype)
        inverse = None
        if inverse_reg_per_shell is not None:
            inverse = torch.zeros_like(table)
            inverse[:nyq + 1] = inverse_reg_per_shell.to(w.device, w.dtype)
        for z in range(0, self.padded, SLAB):
            shells, ws = half_shells(self.padded, pad, z, z + SLAB, w.device), w[z:z + SLAB]
            den = table[shells]
            if inverse is not None:
                den += torch.where(ws > 0, inverse[shells] / ws.clamp_min(torch.finfo(ws.dtype).tiny), 0.0)
            den += ws
            den.masked_fill_(~(den > 0), torch.inf)
            torch.view_as_real(data[z:z + SLAB]).div_(den[..., None])  # real and imaginary parts alike
        del w
        vol = volume_from_half_ft(data, self.size, overwrite=True)
        del data
        return vol.mul_(_corner_fade(self.size, vol.device, vol.dtype))

    def shell_weight(self, power: int = 1) -> torch.Tensor:
        """Mean of ``(Σ c²)^power`` over each output shell ``(D//2+1,)`` of the full grid (voxels inside Nyquist;
        a half-grid voxel counts for itself and its Friedel mate, :func:`~cryolens.imaging.half_grid.
        half_plane_multiplicity`)."""
        n, pad = self.size // 2 + 1, self.padded // self.size
        weight = self._finished()[1]
        mult = half_plane_multiplicity(self.padded, device=weight.device)
        s = torch.zeros(n, dtype=torch.float64, device=weight.device)
        for z in range(0, self.padded, SLAB):  # float64 a slab at a time: no float64 copy of the grid
            w = weight[z:z + SLAB].double().pow(power).mul_(mult)
            shells = half_shells(self.padded, pad, z, z + SLAB, weight.device)
            s += torch.bincount(shells.reshape(-1), weights=w.reshape(-1), minlength=n)[:n]
        return s / _shell_counts(self.padded, pad, self.device)[:n]


@functools.lru_cache(maxsize=2)
def _shell_counts(padded: int, pad: int, device: torch.device) -> torch.Tensor:
    """Voxels of the full grid in each output shell (:func:`~cryolens.imaging.half_grid.half_shells`), float64,
    at least 1 (cached)."""
    mult = half_plane_multiplicity(padded, device=device)
    counts = torch.zeros(n_output_shells(padded, pad), dtype=torch.float64, device=device)
    for z in range(0, padded, SLAB):
        shells = half_shells(padded, pad, z, z + SLAB, device)
        counts += torch.bincount(shells.reshape(-1), weights=mult.expand(shells.shape).reshape(-1),
                                 minlength=counts.numel())
    return counts.clamp_min(1)


@functools.lru_cache(maxsize=2)
def _corner_fade(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(D, D, D)`` 1 inside radius ``D/2``, a raised cosine to 0 over 3 voxels beyond (cached: callers must not
    modify it in place)."""
    return spherical_mask(size, radius=size / 2, width=3.0, device=device).to(dtype)


def fsc_reference_weight(fsc_curve: np.ndarray) -> np.ndarray:
    """Per-shell weight ``sqrt(2 FSC / (1 + FSC))`` (FSC clipped to ``[0, 1]``) that turns a half map into a
    search reference: the expected correlation of the half map's shell with the true map's
    (Rosenthal & Henderson 2003's ``C_ref``), so shells the halves do not agree on are damped to 0.
    ``(D//2+1,)`` float64."""
    f = np.clip(np.asarray(fsc_curve, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2 * f / (1 + f))


def insert_images(acc: FourierAccumulator, particles, idx: torch.Tensor, images: torch.Tensor, device) -> None:
    """Insert ``images (B, D, D)`` of particles ``idx (B,)`` (a :class:`~cryolens.io.particles.Particles` with
    poses) into ``acc``: transform, undo the shifts, weight by the CTFs, insert — each on the ``kx ≥ 0`` half
    columns only (the half grid reads no others)."""
    shifts = None if particles.shifts is None else particles.shifts[idx].to(device)
    ctf = None if particles.ctf is None else particles.ctf[idx].to(device)
    values, weights = half_column_products(images.to(device), shifts, ctf, particles.pixel_size)
    acc.add_products(values, weights, particles.rotations[idx].to(device))

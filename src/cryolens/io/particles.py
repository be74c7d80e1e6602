"""The one in-memory particle metadata model: every reader returns a :class:`Particles`,
every writer takes one.

Conventions (docs/CONVENTIONS.md): ``rotations`` ``(N, 3, 3)`` map image-frame coordinates into the
volume frame (``image(x, y) = ∫ V(R [x, y, z]ᵀ) dz``); ``shifts`` ``(N, 2)`` pixels ``(x, y)`` are
where the particle's centre sits relative to the image centre (RELION's origin with the opposite
sign); CTF parameters in RELION's units except angles, which are radians.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..imaging.ctf import CTFParams
from .metadata import (check_stack_rows, ctf_columns, relative_or_absolute, resolve_stack_path,  # noqa: F401
                       resolve_stacks, stack_info_for)


@dataclass
class Particles:
    """Per-particle metadata of one dataset of ``N`` images.

    pixel_size: Å/px. box_size: ``D`` (even).
    image_files: absolute paths of the stacks. image_file_index: ``(N,)`` int, which stack each
    particle is in. image_index: ``(N,)`` int, 0-based index inside that stack.
    rotations: ``(N, 3, 3)`` float32, image frame → volume frame, or None (no poses).
    shifts: ``(N, 2)`` float32 pixels ``(x, y)``, particle centre relative to the image centre, or None.
    ctf: :class:`~cryolens.imaging.ctf.CTFParams` with ``(N,)`` fields (radians for angles), or None.
    extra: other per-particle columns ``(N,)`` kept through round trips (RELION labels such as
    ``rlnClassNumber``, ``rlnRandomSubset``; ``uid`` from cryoSPARC).
    source: the file the metadata came from (for messages), "" when built in code.
    """

    pixel_size: float
    box_size: int
    image_files: list[str]
    image_file_index: np.ndarray
    image_index: np.ndarray
    rotations: torch.Tensor | None = None
    shifts: torch.Tensor | None = None
    ctf: CTFParams | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        self.pixel_size = float(self.pixel_size)
        self.box_size = int(self.box_size)
        self.image_files = [str(f) for f in self.image_files]
        self.image_file_index = np.asarray(self.image_file_index, dtype=np.int64).reshape(-1)
        self.image_index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        if self.rotations is not None:
            self.rotations = torch.as_tensor(self.rotations, dtype=torch.float32)
        if self.shifts is not None:
            self.shifts = torch.as_tensor(self.shifts, dtype=torch.float32)
        self.extra = {str(k): np.asarray(v) for k, v in (self.extra or {}).items()}

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def name(self) -> str:
        """What to call this dataset in messages: its source file, or "particles"."""
        return self.source or "particles"

    def image_path(self, i: int) -> str:
        """Absolute path of the stack holding particle ``i``."""
        return self.image_files[int(self.image_file_index[i])]

    def subset(self, indices) -> Particles:
        """The particles at ``indices`` (int array, list, slice or boolean mask), in that order."""
        if isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.asarray(indices)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise ValueError(f"subset: boolean mask of shape {idx.shape}, expected ({len(self)},)")
                idx = np.nonzero(idx)[0]
            idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset: index out of range for {len(self)} particles")
        t = torch.as_tensor(idx)
        return Particles(
            pixel_size=self.pixel_size, box_size=self.box_size, image_files=list(self.image_files),
            image_file_index=self.image_file_index[idx].copy(), image_index=self.image_index[idx].copy(),
            rotations=None if self.rotations is None else self.rotations[t].clone(),
            shifts=None if self.shifts is None else self.shifts[t].clone(),
            ctf=None if self.ctf is None else self.ctf[t],
            extra={k: v[idx].copy() for k, v in self.extra.items()}, source=self.source)

    def validate(self) -> Particles:
        """Check shapes and values agree with each other; raise :class:`InputError` naming
        :attr:`name` if not. Returns ``self``."""
        n, src = len(self), self.name
        if not (np.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise InputError(f"{src}: pixel size {self.pixel_size} Å is not positive")
        if self.box_size <= 0 or self.box_size % 2:
            raise InputError(f"{src}: box size {self.box_size} is odd; cryolens needs an even box"
                             if self.box_size > 0 else f"{src}: box size {self.box_size} is not positive")
        if self.image_file_index.shape != (n,):
            raise InputError(f"{src}: {self.image_file_index.shape[0]} stack indices for {n} particles")
        if n and (self.image_file_index.min() < 0 or self.image_file_index.max() >= len(self.image_files)):
            raise InputError(f"{src}: stack index outside the {len(self.image_files)} stack files")
        if n and self.image_index.min() < 0:
            row = int(np.argmin(self.image_index))
            raise InputError(f"{src}: row {row + 1} has a negative image index")
        if self.rotations is not None:
            if tuple(self.rotations.shape) != (n, 3, 3):
                raise InputError(f"{src}: rotations have shape {tuple(self.rotations.shape)}, expected ({n}, 3, 3)")
            if not bool(torch.isfinite(self.rotations).all()):
                raise InputError(f"{src}: row {_first_bad(self.rotations.reshape(n, -1)) + 1} has a non-finite angle")
        if self.shifts is not None:
            if tuple(self.shifts.shape) != (n, 2):
                raise InputError(f"{src}: shifts have shape {tuple(self.shifts.shape)}, expected ({n}, 2)")
            if not bool(torch.isfinite(self.shifts).all()):
                raise InputError(f"{src}: row {_first_bad(self.shifts) + 1} has a non-finite shift")
        if self.ctf is not None:
            for name, v in self.ctf.as_dict().items():
                if tuple(v.shape) != (n,):
                    raise InputError(f"{src}: CTF {name} has shape {tuple(v.shape)}, expected ({n},)")
                if not bool(torch.isfinite(v).all()):
                    raise InputError(f"{src}: row {_first_bad(v[:, None]) + 1} has a non-finite CTF {name}")
            q0 = self.ctf.amplitude_contrast
            if n and bool(((q0 < 0) | (q0 >= 1)).any()):
                raise InputError(f"{src}: amplitude contrast outside [0, 1)")
            if n and bool((self.ctf.voltage <= 0).any()):
                raise InputError(f"{src}: voltage must be positive (kV)")
        for k, v in self.extra.items():
            if v.shape[:1] != (n,):
                raise InputError(f"{src}: column {k} has {v.shape[0] if v.ndim else 0} values for {n} particles")
        return self

    def check_stacks(self) -> Particles:
        """Open every stack's header and check its box matches and every row's image index is
        inside it; raise :class:`InputError` naming the metadata file, the row and the stack."""
        check_stack_rows(self.name, self.image_files, self.image_file_index, self.image_index, self.box_size)
        return self


def _first_bad(x: torch.Tensor) -> int:
    return int(torch.nonzero(~torch.isfinite(x).all(dim=1))[0, 0])


def ctf_from_columns(defocus_u, defocus_v=None, defocus_angle_deg=None, voltage=None, cs=None,
                     amplitude_contrast=None, phase_shift_deg=None, bfactor=None, n: int | None = None) -> CTFParams:
    """Build :class:`CTFParams` (float32) from file columns in RELION units (angles in degrees), by
    :func:`~cryolens.io.metadata.ctf_columns` (angles to radians, defaults for missing columns)."""
    arrays = ctf_columns(defocus_u, defocus_v, defocus_angle_deg, voltage, cs, amplitude_contrast, phase_shift_deg,
                         bfactor, n)
    return CTFParams(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in arrays.items()})


def half_set_labels(particles: Particles, seed: int = 0) -> np.ndarray:
    """``(N,)`` gold-standard half-set label 0/1: ``rlnRandomSubset`` (1/2) when the metadata has it,
    else a seeded random split into equal halves (the same split for the same ``seed`` everywhere:
    back-projection, auto-refinement and the RELION adapters)."""
    subset = particles.extra.get("rlnRandomSubset") if particles.extra else None
    if subset is not None:
        return (np.asarray(subset).astype(int) - 1).clip(0, 1)
    labels = np.zeros(len(particles), dtype=int)
    labels[np.random.default_rng(seed).permutation(len(particles))[len(particles) // 2:]] = 1
    return labels

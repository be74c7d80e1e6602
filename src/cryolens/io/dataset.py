"""Streaming particle images with their metadata, whatever the source file.

:class:`ParticleDataset` is a ``torch.utils.data.Dataset`` over memory-mapped stacks (nothing is
loaded whole; safe with ``DataLoader`` workers), :func:`iterate_batches` reads batches in as few
contiguous slices as possible, and :func:`read_particles` picks the reader from the file suffix.
Images are ``(D, D)`` float32 ``[y, x]``; any NaN or infinite pixel raises :class:`InputError`
naming the stack and the 0-based image index.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .mrc import open_stack
from .particles import Particles


class _Stacks:
    """Lazily opened read-only memory maps of a dataset's stacks (reopened after pickling)."""

    def __init__(self, files: list[str]):
        self.files = files
        self._maps: dict[int, np.ndarray] = {}

    def __getitem__(self, f: int) -> np.ndarray:
        m = self._maps.get(f)
        if m is None:
            m = self._maps[f] = open_stack(self.files[f])
        return m

    def __getstate__(self):
        return {"files": self.files, "_maps": {}}


def _check_finite(images: np.ndarray, path: str, image_index: np.ndarray) -> None:
    ok = np.isfinite(images).reshape(images.shape[0], -1).all(axis=1)
    if not ok.all():
        k = int(np.nonzero(~ok)[0][0])
        raise InputError(f"{path}: image {int(image_index[k])} (0-based) has NaN or infinite pixels")


def _release_pages(mm: np.ndarray, lo: int, hi: int) -> None:
    """Tell the kernel the mapped pages of rows ``lo..hi-1`` are no longer needed by this process.

    Streaming a stack through a memory map would otherwise leave every page read in the process's
    resident set (file-backed, reclaimable, but counted in RSS), so RSS would grow with the dataset.
    The pages stay in the system's page cache; a later read maps them again.
    """
    base = mm
    while base is not None and getattr(base, "_mmap", None) is None:
        base = getattr(base, "base", None)
    handle = getattr(base, "_mmap", None)
    if handle is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    offset = int(base.offset)  # file offset of base[0]; numpy maps from offset − offset % ALLOCATIONGRANULARITY
    map_start = offset - offset % mmap.ALLOCATIONGRANULARITY
    row = mm.strides[0]
    start = offset + (mm.__array_interface__["data"][0] - base.__array_interface__["data"][0]) + lo * row
    first = start - start % mmap.PAGESIZE
    with contextlib.suppress(ValueError, OSError):  # no madvise for file maps here: nothing to release
        handle.madvise(mmap.MADV_DONTNEED, first - map_start, start + (hi - lo) * row - first)


def _read_rows(mm: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of a memmap as a float32 copy: one slice when they are dense, else a gather;
    the mapped pages read are released afterwards (see :func:`_release_pages`)."""
    if idx.size == 0:
        return np.empty((0,) + mm.shape[1:], dtype=np.float32)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    if hi - lo <= 2 * idx.size:
        block = mm[lo:hi]
        out = block if (idx.size == hi - lo and np.all(np.diff(idx) == 1)) else block[idx - lo]
    else:
        out = mm[np.sort(idx)][np.argsort(np.argsort(idx))]  # sorted gather reads the file forwards
    out = np.array(out, dtype=np.float32, copy=True)
    _release_pages(mm, lo, hi)
    return out


class ParticleDataset(Dataset):
    """Particle ``i`` → ``dict(image=(D, D) float32, rotation=(3, 3) [if poses], shift=(2,) px,
    ctf={name: scalar} [if CTF], index=i)``, read on demand from memory-mapped stacks.

    ``shift`` is zero when the metadata has none. Tensors are created on ``device`` (default CPU;
    keep the default when using ``DataLoader`` workers)."""

    def __init__(self, particles: Particles, device: torch.device | str | None = None):
        self.particles = particles
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._stacks = _Stacks(particles.image_files)

    def __len__(self) -> int:
        return len(self.particles)

    def __getitem__(self, i: int) -> dict:
        p = self.particles
        i = int(i)
        if not -len(p) <= i < len(p):
            raise IndexError(f"particle {i} out of range for {len(p)} particles")
        i %= len(p)
        f, k = int(p.image_file_index[i]), int(p.image_index[i])
        img = np.asarray(self._stacks[f][k], dtype=np.float32)
        _check_finite(img[None], p.image_files[f], np.array([k]))
        out = {"image": torch.from_numpy(img.copy()).to(self.device), "index": i}
        if p.rotations is not None:
            out["rotation"] = p.rotations[i].to(self.device)
        out["shift"] = (p.shifts[i] if p.shifts is not None else torch.zeros(2)).to(self.device)
        if p.ctf is not None:
            out["ctf"] = {name: v[i].to(self.device) for name, v in p.ctf.as_dict().items()}
        return out


def read_images(particles: Particles, indices, stacks: _Stacks | None = None) -> torch.Tensor:
    """Images of ``indices`` (in that order) as ``(B, D, D)`` float32, checked for NaN / inf."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    stacks = stacks or _Stacks(particles.image_files)
    d = particles.box_size
    out = np.empty((idx.size, d, d), dtype=np.float32)
    files = particles.image_file_index[idx]
    for f in np.unique(files):
        pos = np.nonzero(files == f)[0]
        rows = particles.image_index[idx[pos]]
        images = _read_rows(stacks[int(f)], rows)
        _check_finite(images, particles.image_files[int(f)], rows)
        out[pos] = images
    return torch.from_numpy(out)


def iterate_batches(particles: Particles, batch_size: int, indices=None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(indices (B,) int64, images (B, D, D) float32 CPU tensor)`` over ``indices`` (default
    all particles, in order), ``batch_size`` at a time, reading contiguous runs of each stack as
    single slices of its memory map."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.arange(len(particles)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    stacks = _Stacks(particles.image_files)
    for start in range(0, order.size, batch_size):
        idx = order[start:start + batch_size]
        yield idx, read_images(particles, idx, stacks)


def read_particles(path: str | os.PathLike, poses: str | os.PathLike | None = None,
                   ctf: str | os.PathLike | None = None) -> Particles:
    """Read particle metadata by suffix: ``.star`` (RELION), ``.cs`` (cryoSPARC), ``.mrcs``/``.mrc``
    (a cryoDRGN-style stack). cryoDRGN pose / CTF pickles given as ``poses`` / ``ctf`` replace the
    file's own poses / CTF (cryoDRGN pairs them with any of the three, in particle order)."""
    from .cryodrgn import apply_pickles, read_cryodrgn
    from .cryosparc import read_cs
    from .star import read_star

    suffix = Path(path).suffix.lower()
    if suffix in (".mrcs", ".mrc"):
        return read_cryodrgn(path, poses, ctf)
    if suffix == ".star":
        particles = read_star(path)
    elif suffix == ".cs":
        particles = read_cs(path)
    else:
        raise InputError(f"{path}: unknown particle file type {suffix or '(no suffix)'}; "
                         "expected .star, .cs or .mrcs")
    if poses is not None or ctf is not None:
        particles = apply_pickles(particles, poses, ctf)
    return particles

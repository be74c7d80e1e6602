"""MRC volumes and image stacks (``mrcfile``): checked reads, memory-mapped stacks, atomic writes.

Volumes are ``(D, D, D)`` float32 indexed ``[z, y, x]``; stacks ``(N, D, D)`` indexed ``[n, y, x]``
(MRC's own order). The pixel size (Å/px) is the header's voxel size. Every reader checks the file
before using it and raises :class:`~cryolens.errors.InputError` with one line naming the file: not
an MRC file, truncated (file shorter than the header says), not 3D / not 2D as expected, non-square
or odd box. Stacks are opened read-only and memory-mapped, never loaded whole.
"""

from __future__ import annotations

import contextlib

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import InputError
from .files import atomic_path, require_file

log = logging.getLogger(__name__)

_HEADER_BYTES = 1024


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class MrcInfo:
    """What an MRC header says: data ``shape`` as numpy sees it (``(ny, nx)`` for one image,
    ``(nz, ny, nx)`` otherwise), numpy ``dtype``, ``pixel_size`` (Å, x voxel size; 0 when unset),
    ``ispg`` (space group: 0 for image stacks, 1 for volumes) and the file ``path``."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: float
    ispg: int


def mrc_info(path: str | os.PathLike) -> MrcInfo:
    """Read and check the header of an MRC file without touching its data.

    Raises :class:`InputError` when the file is missing, is not an MRC file (bad map ID,
    unknown mode, impossible dimensions) or is shorter than the header promises.
    """
    p = require_file(path, "MRC file")
    size = p.stat().st_size
    if size < _HEADER_BYTES:
        raise InputError(f"{p}: not an MRC file (only {size} bytes; an MRC header alone is 1024)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(p, mode="r", permissive=False, header_only=True) as mrc:
                header = mrc.header.copy()
                voxel = mrc.voxel_size
        for w in caught:
            log.warning("%s: %s", p, _one_line(w.message))
        dtype = mrcfile.utils.data_dtype_from_header(header)
        shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(header))
    except InputError:
        raise
    except Exception as e:  # mrcfile raises ValueError for a bad map ID or mode, others for garbage
        raise InputError(f"{p}: not a readable MRC file ({_one_line(e)})") from None
    if any(s <= 0 for s in shape):
        raise InputError(f"{p}: corrupt MRC header (dimensions {shape[::-1]})")
    nsymbt = int(header.nsymbt)
    if nsymbt < 0:
        raise InputError(f"{p}: corrupt MRC header (extended header size {nsymbt})")
    expected = _HEADER_BYTES + nsymbt + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise InputError(f"{p}: truncated MRC file: header says {expected} bytes "
                         f"({' x '.join(map(str, shape[::-1]))} {dtype.name}), file has {size}")
    if size > expected:
        log.warning("%s: %d bytes beyond the data block the header describes (ignored)", p, size - expected)
    px = float(voxel.x)
    return MrcInfo(p, shape, np.dtype(dtype), px if np.isfinite(px) and px > 0 else 0.0, int(header.ispg))


def _check_box(path: Path, ny: int, nx: int) -> int:
    if ny != nx:
        raise InputError(f"{path}: images are {nx} x {ny} pixels, not square")
    if nx % 2:
        raise InputError(f"{path}: box size {nx} is odd; cryolens needs an even box")
    return nx


def stack_info(path: str | os.PathLike) -> tuple[int, int, float]:
    """``(n_images, box_size, pixel_size Å)`` of a stack (``.mrcs``, or a 2D ``.mrc`` = one image),
    from the checked header only."""
    info = mrc_info(path)
    if len(info.shape) == 2:
        n, (ny, nx) = 1, info.shape
    elif len(info.shape) == 3:
        n, ny, nx = info.shape
    else:
        raise InputError(f"{info.path}: is a {len(info.shape)}-dimensional MRC (a volume stack), "
                         "not a stack of 2D images")
    return n, _check_box(info.path, ny, nx), info.pixel_size


def _mmap(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # already reported by mrc_info
            with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
                data = mrc.data
    except Exception as e:
        raise InputError(f"{path}: cannot map the MRC data ({_one_line(e)})") from None
    if data is None:
        raise InputError(f"{path}: MRC file has no data block")
    # the memmap keeps its own mapping after the file object closes; make sure nobody writes
    data.flags.writeable = False
    return data


def open_stack(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a stack read-only: ``(N, D, D)`` array ``[n, y, x]`` in the file's dtype
    (a single 2D image comes back as ``(1, D, D)``). Nothing is read until indexed."""
    stack_info(path)  # checks: readable, complete, square, even
    data = _mmap(Path(path))
    if data.ndim == 2:
        data = data[None]
    return data


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a cubic map: ``((D, D, D) float32 [z, y, x], pixel size Å)``.

    A header without a voxel size gives 1.0 Å with a logged warning; NaN or infinite values
    raise :class:`InputError`.
    """
    info = mrc_info(path)
    if len(info.shape) == 2:
        raise InputError(f"{info.path}: is a single 2D image ({info.shape[1]} x {info.shape[0]}), not a 3D volume")
    if len(info.shape) != 3:
        raise InputError(f"{info.path}: is a {len(info.shape)}-dimensional MRC, not a 3D volume")
    nz, ny, nx = info.shape
    if not nz == ny == nx:
        raise InputError(f"{info.path}: map is {nx} x {ny} x {nz}, not a cube")
    if nx % 2:
        raise InputError(f"{info.path}: box size {nx} is odd; cryolens needs an even box")
    if info.dtype.kind == "c":
        raise InputError(f"{info.path}: complex-valued MRC (mode {info.dtype}); expected a real map")
    data = np.array(_mmap(info.path), dtype=np.float32)  # copy into memory, native byte order
    if not np.isfinite(data).all():
        z = int(np.nonzero(~np.isfinite(data).reshape(nz, -1).all(axis=1))[0][0])
        raise InputError(f"{info.path}: map has NaN or infinite values (first in section z={z})")
    px = info.pixel_size
    if px <= 0:
        log.warning("%s: no voxel size in the header; assuming 1.0 Å", info.path)
        px = 1.0
    return data, px


def _as_float32(x) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: reading needs no torch
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def write_volume(path: str | os.PathLike, volume, pixel_size: float) -> Path:
    """Write a ``(D, D, D)`` map (numpy or torch, ``[z, y, x]``) as float32 MRC with voxel size
    ``pixel_size`` Å and header statistics, atomically."""
    vol = _as_float32(volume)
    if vol.ndim != 3:
        raise ValueError(f"write_volume: expected a 3D array, got shape {vol.shape}")
    if not pixel_size > 0:
        raise ValueError(f"write_volume: pixel size must be positive, got {pixel_size}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(vol)
            mrc.set_volume()
            mrc.voxel_size = float(pixel_size)
    return path


class StackWriter:
    """Write an ``N``-image stack in chunks without holding it in memory.

    ::

        with StackWriter("particles.mrcs", n, d, pixel_size) as w:
            for start in range(0, n, 1000):
                w.write(start, images_chunk)      # (B, D, D) numpy or torch

    The file is created as a memory map under a temporary name beside ``path`` and renamed to
    ``path`` on a clean close, after the header statistics (min, max, mean, rms, accumulated chunk
    by chunk) and the voxel size are set. Every image must be written exactly once. On an error
    the temporary file is removed and ``path`` is left as it was.
    """

    def __init__(self, path: str | os.PathLike, n: int, d: int, pixel_size: float):
        if n <= 0 or d <= 0:
            raise ValueError(f"StackWriter: need n > 0 and d > 0, got n={n}, d={d}")
        if d % 2:
            raise ValueError(f"StackWriter: box size {d} is odd; cryolens needs an even box")
        if not pixel_size > 0:
            raise ValueError(f"StackWriter: pixel size must be positive, got {pixel_size}")
        self.path, self.n, self.d, self.pixel_size = Path(path), int(n), int(d), float(pixel_size)
        self._written = np.zeros(self.n, dtype=bool)
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = np.inf
        self._max = -np.inf
        self._atomic = None
        self._mrc = None

    def __enter__(self) -> StackWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._mrc = mrcfile.new_mmap(tmp, shape=(self.n, self.d, self.d), mrc_mode=2, overwrite=True)
            self._mrc.set_image_stack()
            self._mrc.voxel_size = self.pixel_size
        except BaseException:
            self._abort()
            raise
        return self

    def write(self, start: int, images) -> None:
        """Write ``images`` ``(B, D, D)`` as images ``start .. start + B - 1``."""
        if self._mrc is None:
            raise RuntimeError("StackWriter.write outside its 'with' block")
        arr = _as_float32(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (self.d, self.d):
            raise ValueError(f"StackWriter.write: expected (B, {self.d}, {self.d}) images, got {arr.shape}")
        stop = start + arr.shape[0]
        if start < 0 or stop > self.n:
            raise ValueError(f"StackWriter.write: images {start}..{stop - 1} outside 0..{self.n - 1}")
        if self._written[start:stop].any():
            raise ValueError(f"StackWriter.write: images {start}..{stop - 1} overlap images already written")
        self._mrc.data[start:stop] = arr
        self._written[start:stop] = True
        a64 = arr.astype(np.float64)
        self._sum += float(a64.sum())
        self._sumsq += float((a64 * a64).sum())
        self._min = min(self._min, float(arr.min()))
        self._max = max(self._max, float(arr.max()))

    def _abort(self) -> None:
        # cleanup after a failure: the original error is the one to report, not a second one from here
        if self._mrc is not None:
            with contextlib.suppress(Exception):
                self._mrc.close()
            self._mrc = None
        if self._atomic is not None:
            with contextlib.suppress(RuntimeError):  # removes the temporary file, leaves `path` as it was
                self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._atomic = None

    def close(self) -> None:
        """Finish the header and move the file into place."""
        if self._mrc is None:
            return
        if not self._written.all():
            missing = int((~self._written).sum())
            self._abort()
            raise ValueError(f"StackWriter: {missing} of {self.n} images of {self.path} were never written")
        count = self.n * self.d * self.d
        mean = self._sum / count
        h = self._mrc.header
        h.dmin, h.dmax, h.dmean = np.float32(self._min), np.float32(self._max), np.float32(mean)
        h.rms = np.float32(np.sqrt(max(self._sumsq / count - mean * mean, 0.0)))
        self._mrc.close()
        self._mrc = None
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()


def write_stack(path: str | os.PathLike, images, pixel_size: float) -> Path:
    """Write ``(N, D, D)`` images (numpy or torch, ``[n, y, x]``) as a float32 ``.mrcs`` stack, atomically."""
    arr = _as_float32(images)
    if arr.ndim != 3:
        raise ValueError(f"write_stack: expected (N, D, D) images, got shape {arr.shape}")
    if arr.shape[1] != arr.shape[2]:
        raise ValueError(f"write_stack: images must be square, got {arr.shape[1:]}")
    with StackWriter(path, arr.shape[0], arr.shape[1], pixel_size) as w:
        w.write(0, arr)
    return Path(path)

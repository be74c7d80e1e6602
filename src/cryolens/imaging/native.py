"""The compiled insertion kernel: ``native_scatter.cpp``, built with the system C++ compiler on first use.

:func:`cryolens.imaging.slice.scatter_slices` calls :func:`scatter` when :func:`library` is available and the
arrays are on the CPU; otherwise it keeps its pure-torch path (8 ``index_add_`` per channel). The two give the
same sums up to float32 rounding (the kernel computes the trilinear geometry in float64 and adds in the
staging grid's dtype, in its own order).

The shared library is compiled once per source version, compiler and machine type into
``$CRYOLENS_CACHE/kernels`` (default ``~/.cache/cryolens/kernels``) — about a second with ``g++ -O3`` — and
loaded with :mod:`ctypes` (no torch headers, no ninja, nothing downloaded). The compiler is ``$CXX`` or the
first of ``c++``, ``g++``, ``clang++`` on the ``PATH``. Without one, or with ``CRYOLENS_NATIVE=0``, the
torch path is used (a warning says so once when no compiler was found). The kernel is single-threaded and
releases the GIL: callers fill independent grids (e.g. the two half-sets) from threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native_scatter.cpp")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared"]
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _compiler() -> str | None:
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$CRYOLENS_CACHE/kernels`` or ``~/.cache/cryolens/kernels``."""
    root = os.environ.get("CRYOLENS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "cryolens") / "kernels"


def _build(compiler: str) -> Path:
    """Compile :data:`SOURCE` (once per source, compiler and machine; atomic rename, so that processes building
    at the same time do not see half-written files) and return the library's path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, version, platform.machine(), *FLAGS]).encode())
    out = cache_dir() / f"scatter-{key.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if res.returncode:
            raise OSError(f"{compiler} failed on {SOURCE.name}: {res.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name in ("cryolens_scatter_f32", "cryolens_scatter_f64", "cryolens_scatter_voxel_major_f32",
                 "cryolens_scatter_voxel_major_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, ptr, ptr, ptr, i64, ptr, i64]
        fn.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None when disabled (``CRYOLENS_NATIVE=0``) or when
    it cannot be built here (then :func:`unavailable_reason` says why)."""
    if os.environ.get("CRYOLENS_NATIVE", "1") == "0":
        return None
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"], _STATE["why"] = None, ""
            compiler = _compiler()
            try:
                if compiler is None:
                    raise OSError("no C++ compiler (c++, g++, clang++ or $CXX) on the PATH")
                _STATE["lib"] = _load(_build(compiler))
            except (OSError, subprocess.SubprocessError) as exc:
                _STATE["why"] = str(exc)
                warnings.warn(f"cryolens: the compiled insertion kernel is not available ({exc}); using the "
                              "slower pure-torch scatter", RuntimeWarning, stacklevel=2)
        return _STATE["lib"]  # type: ignore[return-value]


def unavailable_reason() -> str:
    """Why :func:`library` returned None after a failed build ('' if it did not fail)."""
    return str(_STATE.get("why", ""))


def usable(staging: torch.Tensor, padded: int) -> bool:
    """Whether :func:`scatter` serves this staging grid: CPU, float32 or float64, contiguous, an even padded size
    (slice pixels inside Nyquist then land inside the grid) and a library."""
    return (staging.device.type == "cpu" and staging.dtype in (torch.float32, torch.float64)
            and staging.is_contiguous() and padded % 2 == 0 and library() is not None)


def scatter(staging: torch.Tensor, slices: torch.Tensor, rotations: torch.Tensor, padded: int,
            weights: torch.Tensor | None, columns: torch.Tensor, multiplicity: torch.Tensor,
            voxel_major: bool = False, half: bool = False) -> None:
    """In place: the trilinear insertion of :func:`~cryolens.imaging.slice.scatter_slices` by the compiled kernel.

    staging: ``(channels, (Dp+2)³)`` (3 channels for complex slices, 2 for real), or ``((Dp+2)³, channels)`` with
    ``voxel_major`` (a voxel's channels side by side: fewer cache lines per corner); with ``half`` the ``kx ≥ 0``
    half grid of :mod:`cryolens.imaging.half_grid`, ``(Dp+2)² (Dp/2+2)`` voxels instead of ``(Dp+2)³`` (a pixel
    whose rotated frequency has ``kx < 0`` lands at its Friedel mate, conjugated). slices: ``(N, D, D)`` complex
    or real, centred layout; weights: ``(N, D, D)`` real or None (1). rotations: ``(N, 3, 3)`` image → volume.
    columns: ``(C,)`` slice columns to insert; multiplicity: ``(D, C)`` factor of each (0 beyond Nyquist).
    Check :func:`usable` first.
    """
    lib = library()
    dt = staging.dtype
    cdt = torch.complex64 if dt == torch.float32 else torch.complex128
    vals = slices.to(cdt) if slices.is_complex() else slices.to(dt)
    vals = torch.view_as_real(vals.contiguous()) if vals.is_complex() else vals.contiguous()
    wts = None if weights is None else weights.to(dt).expand(slices.shape).contiguous()
    rots = rotations.to(torch.float64).contiguous()
    cols = columns.to(torch.int64).contiguous()
    mult = multiplicity.to(torch.float64).contiguous()
    n, d = slices.shape[0], slices.shape[-1]
    if n == 0:
        return
    prefix = "cryolens_scatter_voxel_major" if voxel_major else "cryolens_scatter"
    fn = getattr(lib, f"{prefix}_{'f32' if dt == torch.float32 else 'f64'}")
    channels = staging.shape[-1 if voxel_major else 0]
    fn(staging.data_ptr(), channels, padded, n, d, cols.data_ptr(), cols.numel(), mult.data_ptr(), rots.data_ptr(),
       vals.data_ptr(), int(slices.is_complex()), None if wts is None else wts.data_ptr(), int(half))

"""cryoDRGN pose and CTF pickles (with an ``.mrcs`` stack, or on top of any other particle file).

Formats (read from cryoDRGN's ``parse_pose_star``, ``parse_pose_csparc``, ``parse_ctf_star``,
``parse_ctf_csparc``; docs/CONVENTIONS.md):

- pose pickle: ``(rot (N, 3, 3), trans (N, 2))``, or ``rot`` alone. cryoDRGN's ``rot`` is RELION's
  matrix ``A`` (its ``R_from_relion``; for cryoSPARC it transposes ``expmap(pose)``), i.e. **our
  ``Rᵀ``**. ``trans`` is RELION's origin in pixels divided by the box ``D`` (a fraction of the
  box, RELION's sign), so ``our shift = −trans · D``.
- CTF pickle: float32 ``(N, 9)`` = ``[D, Apix, DefocusU Å, DefocusV Å, DefocusAngle °, kV, Cs mm,
  Q0, phase shift °]`` — RELION's parameters unchanged. cryoDRGN's ``compute_ctf`` is −1 × the CTF
  of these parameters (it inverts the data sign to match); that is a property of its image model,
  not of this file, so the numbers are read and written as they are.

Pickles are read with an unpickler that only rebuilds numpy arrays (no arbitrary code).
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..imaging.ctf import CTFParams
from .files import atomic_path, require_file
from .mrc import stack_info
from .particles import Particles, ctf_from_columns

log = logging.getLogger(__name__)

# what a pickle of numpy arrays (and tuples of them) needs, and nothing else
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "numpy" and name.startswith("dtype")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"holds {module}.{name}, not numpy arrays")


def load_pickle(path: str | os.PathLike, what: str = "pickle") -> object:
    """Load a pickle of numpy arrays; anything else raises :class:`InputError`."""
    p = require_file(path, what)
    try:
        with open(p, "rb") as f:
            return _ArrayUnpickler(f).load()
    except Exception as e:
        raise InputError(f"{p}: not a cryoDRGN {what} ({' '.join(str(e).split()) or type(e).__name__})") from None


def read_pose_pickle(path: str | os.PathLike, n: int, box_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """cryoDRGN pose pickle → ``(rotations (N, 3, 3) our R = rotᵀ, shifts (N, 2) px = −trans · D or None)``."""
    obj = load_pickle(path, "pose pickle")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        rot, trans = obj
    elif isinstance(obj, np.ndarray) and obj.ndim == 3:
        rot, trans = obj, None
    else:
        raise InputError(f"{path}: not a cryoDRGN pose pickle (expected (rot, trans) or rot)")
    try:
        rot = np.asarray(rot, dtype=np.float64)
        trans = None if trans is None else np.asarray(trans, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: pose pickle holds non-numeric data") from None
    if rot.shape != (n, 3, 3):
        raise InputError(f"{path}: rotations have shape {rot.shape}, expected ({n}, 3, 3) for {n} images")
    if trans is not None and trans.shape != (n, 2):
        raise InputError(f"{path}: translations have shape {trans.shape}, expected ({n}, 2) for {n} images")
    for name, a in (("rotation", rot), ("translation", trans)):
        if a is not None:
            bad = np.nonzero(~np.isfinite(a.reshape(n, -1)).all(axis=1))[0]
            if bad.size:
                raise InputError(f"{path}: {name} {bad[0]} (0-based) is not finite")
    ortho = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rot)
    bad = np.nonzero((ortho > 1e-3) | (det < 0))[0]
    if bad.size:
        raise InputError(f"{path}: matrix {bad[0]} (0-based) is not a rotation (det {det[bad[0]]:.3f})")
    rotations = torch.as_tensor(rot.transpose(0, 2, 1).copy(), dtype=torch.float32)  # our R = cryoDRGN rotᵀ
    shifts = None if trans is None else torch.as_tensor(-trans * box_size, dtype=torch.float32)  # −trans · D
    return rotations, shifts


def read_ctf_pickle(path: str | os.PathLike, n: int) -> tuple[CTFParams, int, float]:
    """cryoDRGN CTF pickle → ``(CTFParams (radians), D it was made for, Apix Å)``."""
    obj = load_pickle(path, "CTF pickle")
    try:
        a = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: not a cryoDRGN CTF pickle (expected a float array (N, 9))") from None
    if a.ndim != 2 or a.shape[1] != 9:
        raise InputError(f"{path}: CTF array has shape {a.shape}, expected (N, 9)")
    if a.shape[0] != n:
        raise InputError(f"{path}: CTF for {a.shape[0]} images, the stack has {n}")
    bad = np.nonzero(~np.isfinite(a).all(axis=1))[0]
    if bad.size:
        raise InputError(f"{path}: row {bad[0]} (0-based) is not finite")
    d, apix = a[0, 0], a[0, 1]
    if not (np.allclose(a[:, 0], d) and np.allclose(a[:, 1], apix, rtol=1e-4)):
        raise InputError(f"{path}: box or pixel size differs between images")
    ctf = ctf_from_columns(a[:, 2], a[:, 3], a[:, 4], a[:, 5], a[:, 6], a[:, 7], a[:, 8])
    return ctf, int(round(d)), float(apix)


def apply_pickles(particles: Particles, poses: str | os.PathLike | None = None,
                  ctf: str | os.PathLike | None = None) -> Particles:
    """Replace the poses and/or CTF of ``particles`` with those of cryoDRGN pickles (in particle
    order, as cryoDRGN pairs them with a STAR, .cs or .mrcs particle file)."""
    n, d = len(particles), particles.box_size
    if poses is not None:
        particles.rotations, particles.shifts = read_pose_pickle(poses, n, d)
    if ctf is not None:
        params, d_ctf, apix = read_ctf_pickle(ctf, n)
        px = apix * d_ctf / d  # a CTF pickle made for the full box, applied to a downsampled stack
        if abs(px / particles.pixel_size - 1) > 1e-3:
            log.warning("%s: pixel size %.4f Å (D=%d) differs from %s's %.4f Å (D=%d); keeping the latter",
                        ctf, apix, d_ctf, particles.name, particles.pixel_size, d)
        particles.ctf = params
    return particles.validate()


def read_cryodrgn(stack_path: str | os.PathLike, poses_pkl: str | os.PathLike | None = None,
                  ctf_pkl: str | os.PathLike | None = None) -> Particles:
    """A cryoDRGN dataset: an ``.mrcs`` stack (particle ``i`` = image ``i``) with optional pose and
    CTF pickles. The pixel size is the CTF pickle's ``Apix`` (scaled by ``D_ctf / D`` when the stack
    was downsampled after the pickle was made), else the stack header's voxel size."""
    stack = require_file(stack_path, "particle stack").resolve()
    n, d, px_header = stack_info(stack)
    px = px_header
    ctf_info = None
    if ctf_pkl is not None:
        ctf_info = read_ctf_pickle(ctf_pkl, n)
        _, d_ctf, apix = ctf_info
        px = apix * d_ctf / d
        if d_ctf != d:
            log.info("%s: made for D=%d, stack has D=%d: pixel size %.4f Å", ctf_pkl, d_ctf, d, px)
    if not px > 0:
        raise InputError(f"{stack}: no voxel size in the header and no CTF pickle to give the pixel size")
    particles = Particles(pixel_size=px, box_size=d, image_files=[str(stack)], image_file_index=np.zeros(n, np.int64),
                          image_index=np.arange(n), source=str(stack))
    if poses_pkl is not None:
        particles.rotations, particles.shifts = read_pose_pickle(poses_pkl, n, d)
    if ctf_info is not None:
        particles.ctf = ctf_info[0]
    return particles.validate()


def _dump(path: str | os.PathLike, obj: object) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    return path


def write_cryodrgn_poses(path: str | os.PathLike, particles: Particles) -> Path:
    """Write ``(rot = Rᵀ, trans = −shift / D)`` float32 as a cryoDRGN pose pickle, atomically
    (zero translations when the particles have no shifts)."""
    if particles.rotations is None:
        raise InputError(f"{particles.name}: has no poses to write to {path}")
    rot = particles.rotations.detach().cpu().double().transpose(1, 2).numpy().astype(np.float32)
    if particles.shifts is None:
        trans = np.zeros((len(particles), 2), dtype=np.float32)
    else:
        trans = (-particles.shifts.detach().cpu().double().numpy() / particles.box_size).astype(np.float32)
    return _dump(path, (rot, trans))


def write_cryodrgn_ctf(path: str | os.PathLike, particles: Particles) -> Path:
    """Write the ``(N, 9)`` float32 cryoDRGN CTF pickle (angles in degrees), atomically."""
    c = particles.ctf
    if c is None:
        raise InputError(f"{particles.name}: has no CTF parameters to write to {path}")
    n = len(particles)
    cols = [np.full(n, float(particles.box_size)), np.full(n, particles.pixel_size)]
    for v, deg in ((c.defocus_u, False), (c.defocus_v, False), (c.defocus_angle, True), (c.voltage, False),
                   (c.cs, False), (c.amplitude_contrast, False), (c.phase_shift, True)):
        a = v.detach().cpu().double().numpy()
        cols.append(np.rad2deg(a) if deg else a)
    if bool((c.bfactor != 0).any()):
        log.warning("%s: CTF B-factors are not part of cryoDRGN's CTF pickle and are not written", particles.name)
    return _dump(path, np.stack(cols, axis=1).astype(np.float32))

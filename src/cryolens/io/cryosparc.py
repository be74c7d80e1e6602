"""cryoSPARC ``.cs`` particle files: a numpy structured array saved with ``np.save``.

Fields read (those absent are skipped): ``blob/path``, ``blob/idx`` (0-based), ``blob/shape``
``[ny, nx]``, ``blob/psize_A``; ``alignments3D/pose``, ``alignments3D/shift``,
``alignments3D/psize_A``, ``alignments3D/split``; ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``,
``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``, ``ctf/phase_shift_rad``, ``ctf/bfactor``; ``uid``.

Conventions at this boundary:

- ``alignments3D/pose`` is a rotation vector (radians) of our ``R`` itself: cryoDRGN's
  ``parse_pose_csparc`` turns it into a matrix with the standard Rodrigues formula and then
  transposes it to get its own ``rot``, which is RELION's ``A = Rᵀ``; so ``expmap(pose) = R``.
- ``alignments3D/shift`` (pixels) has RELION's origin sign: cryoDRGN's parser stores
  ``trans = shift / D`` exactly as it stores ``rlnOriginX / D`` from a STAR file, and pyem's
  ``csparc2star`` copies it unchanged into ``rlnOriginX/Y``. So ``our shift = −alignments3D/shift``.
  When ``alignments3D/psize_A`` differs from ``blob/psize_A`` (alignment done on binned images) the
  shift is rescaled from alignment pixels to image pixels (cryoDRGN hard-codes a factor 2 for
  heterogeneous refinement for the same reason).
- CTF angles are radians already; defocus Å, voltage kV, Cs mm, B-factor Å².
- ``blob/path`` is relative to the cryoSPARC project folder (a leading ``>`` marks a link and is
  dropped); it is tried against the ``.cs`` file's folder, its parent and the current folder.

RELION-style extra columns survive a round trip: ``rlnRandomSubset`` ↔ ``alignments3D/split``
(1/2 ↔ 0/1), other columns as ``cryolens/<name>`` fields.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..imaging.ctf import CTFParams
from ..imaging.rotations import matrix_to_rotvec, rotvec_to_matrix
from .files import atomic_path, require_file
from .particles import Particles, relative_or_absolute, resolve_stacks, stack_info_for

log = logging.getLogger(__name__)

_EXTRA_PREFIX = "cryolens/"


def _load(path: Path) -> np.ndarray:
    try:
        cs = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: not a cryoSPARC .cs file ({' '.join(str(e).split())})") from None
    except Exception as e:
        raise InputError(f"{path}: not a cryoSPARC .cs file (numpy cannot read it: {type(e).__name__})") from None
    if not isinstance(cs, np.ndarray) or cs.dtype.names is None or cs.ndim != 1:
        raise InputError(f"{path}: not a cryoSPARC .cs file (no table of named fields)")
    return cs


def _decode(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _constant(path: Path, name: str, values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: {name} has non-finite values")
    if not np.allclose(values, values[0], rtol=1e-4, atol=0):
        raise InputError(f"{path}: {name} differs between particles ({values.min():g} to {values.max():g})")
    return float(values[0])


def _finite(path: Path, cs: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(cs[name], dtype=np.float64)
    bad = np.nonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1))[0]
    if bad.size:
        raise InputError(f"{path}: row {bad[0] + 1}: {name} is not finite")
    return v


def read_cs(path: str | os.PathLike) -> Particles:
    """Read a cryoSPARC ``.cs`` particle file into :class:`Particles` (poses and CTF optional)."""
    path = require_file(path, "cryoSPARC .cs file")
    cs = _load(path)
    names = set(cs.dtype.names)
    for need in ("blob/path", "blob/idx"):
        if need not in names:
            raise InputError(f"{path}: missing field {need}")
    n = len(cs)
    if n == 0:
        raise InputError(f"{path}: no particles in the file")

    stack_names = [_decode(s).lstrip(">") for s in cs["blob/path"]]
    bases = [path.parent.resolve(), path.parent.resolve().parent, Path.cwd().resolve()]
    image_files, file_index = resolve_stacks(stack_names, bases, str(path), log)
    image_index = np.asarray(cs["blob/idx"], dtype=np.int64)

    if "blob/psize_A" in names:
        px = _constant(path, "blob/psize_A", cs["blob/psize_A"])
    else:
        _, _, px = stack_info_for(path, image_files[0])
        if px <= 0:
            raise InputError(f"{path}: no blob/psize_A and {image_files[0]} has no voxel size")
    if "blob/shape" in names:
        shape = np.asarray(cs["blob/shape"], dtype=np.int64).reshape(n, -1)
        if shape.shape[1] != 2 or not (shape == shape[0]).all():
            raise InputError(f"{path}: blob/shape differs between particles")
        if shape[0, 0] != shape[0, 1]:
            raise InputError(f"{path}: images are {shape[0, 1]} x {shape[0, 0]} pixels, not square")
        box = int(shape[0, 0])
    else:
        _, box, _ = stack_info_for(path, image_files[0])
    if box % 2:
        raise InputError(f"{path}: box size {box} is odd; cryolens needs an even box")

    rotations = None
    if "alignments3D/pose" in names:
        pose = _finite(path, cs, "alignments3D/pose").reshape(n, 3)
        rotations = rotvec_to_matrix(torch.as_tensor(pose)).to(torch.float32)  # expmap(pose) = our R
    shifts = None
    if "alignments3D/shift" in names:
        scale = 1.0
        if "alignments3D/psize_A" in names:
            align_px = _constant(path, "alignments3D/psize_A", cs["alignments3D/psize_A"])
            if align_px > 0 and abs(align_px / px - 1) > 1e-4:
                scale = align_px / px  # alignment pixels → image pixels
                log.info("%s: shifts are in %.4f Å alignment pixels; rescaled to %.4f Å image pixels",
                         path, align_px, px)
        # cryoSPARC's shift has RELION's origin sign: our shift = −shift
        shifts = torch.as_tensor(-_finite(path, cs, "alignments3D/shift").reshape(n, 2) * scale, dtype=torch.float32)

    ctf = None
    if "ctf/df1_A" in names:
        for need in ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast"):
            if need not in names:
                raise InputError(f"{path}: has ctf/df1_A but no {need}")

        def col(name, default=0.0):
            return _finite(path, cs, name) if name in names else np.full(n, default)

        ctf = CTFParams(*[torch.as_tensor(v, dtype=torch.float32) for v in (
            col("ctf/df1_A"), col("ctf/df2_A") if "ctf/df2_A" in names else col("ctf/df1_A"),
            col("ctf/df_angle_rad"), col("ctf/accel_kv"), col("ctf/cs_mm"), col("ctf/amp_contrast"),
            col("ctf/phase_shift_rad"), col("ctf/bfactor"))])

    extra: dict[str, np.ndarray] = {}
    if "uid" in names:
        extra["uid"] = np.asarray(cs["uid"])
    if "alignments3D/split" in names:
        extra["rlnRandomSubset"] = np.asarray(cs["alignments3D/split"]).astype(np.int64) + 1
    for f in cs.dtype.names:
        if f.startswith(_EXTRA_PREFIX):
            v = np.asarray(cs[f])
            if v.dtype.kind == "S":
                v = np.array([_decode(x) for x in v], dtype=object)
            extra[f[len(_EXTRA_PREFIX):]] = v

    particles = Particles(pixel_size=px, box_size=box, image_files=image_files, image_file_index=file_index,
                          image_index=image_index, rotations=rotations, shifts=shifts, ctf=ctf, extra=extra,
                          source=str(path))
    return particles.validate().check_stacks()


def cs_table(particles: Particles, cs_dir: str | os.PathLike) -> np.ndarray:
    """The structured array :func:`write_cs` saves; ``blob/path`` relative to ``cs_dir`` when below it."""
    n = len(particles)
    rel = [relative_or_absolute(f, cs_dir).encode("utf-8") for f in particles.image_files]
    paths = np.array([rel[int(i)] for i in particles.image_file_index], dtype=bytes)
    cols: list[tuple[str, np.ndarray]] = []
    uid = particles.extra.get("uid")
    if uid is None or np.asarray(uid).dtype.kind not in "iu":
        uid = np.random.default_rng().integers(0, 2**63 - 1, n, dtype=np.int64).astype(np.uint64)
    cols.append(("uid", np.asarray(uid, dtype=np.uint64)))
    cols += [("blob/path", paths), ("blob/idx", particles.image_index.astype(np.uint32)),
             ("blob/shape", np.tile(np.array([particles.box_size] * 2, dtype=np.uint32), (n, 1))),
             ("blob/psize_A", np.full(n, particles.pixel_size, dtype=np.float32))]
    if particles.rotations is not None:
        cols.append(("alignments3D/pose", matrix_to_rotvec(particles.rotations.double()).numpy().astype(np.float32)))
    if particles.shifts is not None:
        cols.append(("alignments3D/shift", (-particles.shifts.double()).numpy().astype(np.float32)))
    if particles.rotations is not None or particles.shifts is not None:
        cols.append(("alignments3D/psize_A", np.full(n, particles.pixel_size, dtype=np.float32)))
    if "rlnRandomSubset" in particles.extra:
        cols.append(("alignments3D/split", (np.asarray(particles.extra["rlnRandomSubset"]).astype(np.int64) - 1)
                     .clip(0).astype(np.uint32)))
    c = particles.ctf
    if c is not None:
        for name, v in (("ctf/accel_kv", c.voltage), ("ctf/cs_mm", c.cs), ("ctf/amp_contrast", c.amplitude_contrast),
                        ("ctf/df1_A", c.defocus_u), ("ctf/df2_A", c.defocus_v), ("ctf/df_angle_rad", c.defocus_angle),
                        ("ctf/phase_shift_rad", c.phase_shift), ("ctf/bfactor", c.bfactor)):
            cols.append((name, v.detach().cpu().double().numpy().astype(np.float32)))
    for k, v in particles.extra.items():
        if k in ("uid", "rlnRandomSubset"):
            continue
        v = np.asarray(v)
        if v.ndim != 1:
            continue
        if v.dtype.kind in "biuf":
            cols.append((_EXTRA_PREFIX + k, v))
        else:
            cols.append((_EXTRA_PREFIX + k, np.array([str(x).encode("utf-8") for x in v], dtype=bytes)))
    dtype = [(name, arr.dtype, arr.shape[1:]) if arr.ndim > 1 else (name, arr.dtype) for name, arr in cols]
    table = np.zeros(n, dtype=dtype)
    for name, arr in cols:
        table[name] = arr
    return table


def write_cs(path: str | os.PathLike, particles: Particles) -> Path:
    """Write ``particles`` as a cryoSPARC ``.cs`` file (``np.save`` format, no pickles), atomically."""
    path = Path(path)
    particles.validate()
    table = cs_table(particles, path.parent)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, table, allow_pickle=False)
    return path

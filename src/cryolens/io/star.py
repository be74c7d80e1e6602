"""RELION STAR particle files: read 3.0, 3.1+ and RELION 5; write 3.1 (or 3.0).

Conversions at this boundary (docs/CONVENTIONS.md, checked against ``relion_project``):

- ``R = Rz(rot) Ry(tilt) Rz(psi)`` from ``rlnAngleRot/Tilt/Psi`` (degrees → radians); RELION's own
  matrix ``A`` is ``Rᵀ``.
- ``shift = −rlnOrigin{X,Y}Angst / pixel_size`` (3.1+), ``shift = −rlnOrigin{X,Y}`` (3.0, pixels):
  a positive RELION origin moves the particle towards −x.
- CTF: ``rlnDefocusU/V`` Å, ``rlnDefocusAngle`` and ``rlnPhaseShift`` degrees → radians,
  ``rlnVoltage`` kV, ``rlnSphericalAberration`` mm, ``rlnAmplitudeContrast``, ``rlnCtfBfactor`` Å².
- ``rlnImageName`` is ``index@path`` with a 1-based index. Relative stack paths are tried against the
  STAR file's folder first, then the current folder (RELION's own rule); which one was used is
  logged when it is not the STAR file's folder.
- Pixel size: ``rlnImagePixelSize`` (3.1 optics), else ``rlnPixelSize``, else
  ``rlnDetectorPixelSize`` (µm) · 10⁴ / ``rlnMagnification`` (3.0), else the stack header.

Unknown columns of the particle table are kept in :attr:`Particles.extra` and written back out.
Columns of the optics table other than the ones above (beam tilt, aberrations, ...) are not kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..imaging.ctf import CTFParams
from ..imaging.rotations import euler_to_matrix, matrix_to_euler
from .files import atomic_path
from .particles import Particles, relative_or_absolute
from .star_table import ANGLES, CONSUMED, CTF_PARTICLE, OPTICS, ORIGINS_A, ORIGINS_PX, read_star_table  # noqa: F401
from .star_text import write_loops


def read_star(path: str | os.PathLike) -> Particles:
    """Read a RELION particle STAR file (3.0, 3.1+, RELION 5) into :class:`Particles`.

    Poses and CTF are optional (``None`` when their columns are absent). Raises
    :class:`InputError` for a missing ``rlnImageName`` column, a missing stack, a row whose index is
    beyond its stack's end, inconsistent pixel or box sizes, or an odd box (:func:`read_star_table`).
    """
    t = read_star_table(path)
    rotations = None
    if t.angles_deg is not None:  # R = Rz(rot) Ry(tilt) Rz(psi), degrees → radians
        rot, tilt, psi = (torch.as_tensor(np.deg2rad(a)) for a in t.angles_deg)
        rotations = euler_to_matrix(rot, tilt, psi).to(torch.float32)
    ctf = None if t.ctf is None else CTFParams(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in t.ctf.items()})
    particles = Particles(pixel_size=t.pixel_size, box_size=t.box_size, image_files=t.image_files,
                          image_file_index=t.image_file_index, image_index=t.image_index, rotations=rotations,
                          shifts=None if t.shifts is None else torch.as_tensor(t.shifts, dtype=torch.float32),
                          ctf=ctf, extra=t.extra, source=str(t.path))
    return particles.validate()


def _optics_groups(particles: Particles) -> tuple[np.ndarray, np.ndarray]:
    """Group particles by (voltage, Cs, Q0): ``(group id per particle (1-based), one row per group)``."""
    if particles.ctf is None:
        return np.ones(len(particles), dtype=np.int64), np.array([[300.0, 2.7, 0.1]])
    keys = np.stack([particles.ctf.voltage.double().numpy(), particles.ctf.cs.double().numpy(),
                     particles.ctf.amplitude_contrast.double().numpy()], axis=1).round(6)
    table, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1) + 1, table


def star_table(particles: Particles, star_dir: str | os.PathLike, version: str = "3.1") -> dict[str, dict]:
    """The STAR blocks (``{"optics": ..., "particles": ...}`` for 3.1, ``{"": ...}`` for 3.0, each
    ``{label: column}``) that :func:`write_star` writes; stack paths relative to ``star_dir`` when below it."""
    if version not in ("3.0", "3.1"):
        raise ValueError(f"write_star: version must be '3.0' or '3.1', got {version!r}")
    rel = [relative_or_absolute(f, star_dir) for f in particles.image_files]
    names = [f"{int(i) + 1:06d}@{rel[int(f)]}"
             for f, i in zip(particles.image_file_index, particles.image_index, strict=True)]
    out: dict[str, object] = {"rlnImageName": names}
    px = particles.pixel_size
    if particles.rotations is not None:
        rot, tilt, psi = matrix_to_euler(particles.rotations.double())
        out.update(rlnAngleRot=np.rad2deg(rot.numpy()), rlnAngleTilt=np.rad2deg(tilt.numpy()),
                   rlnAnglePsi=np.rad2deg(psi.numpy()))
    if particles.shifts is not None:
        s = particles.shifts.double().numpy()
        if version == "3.1":
            out.update(rlnOriginXAngst=-s[:, 0] * px, rlnOriginYAngst=-s[:, 1] * px)
        else:
            out.update(rlnOriginX=-s[:, 0], rlnOriginY=-s[:, 1])
    c = particles.ctf
    if c is not None:
        out.update(rlnDefocusU=c.defocus_u.double().numpy(), rlnDefocusV=c.defocus_v.double().numpy(),
                   rlnDefocusAngle=np.rad2deg(c.defocus_angle.double().numpy()),
                   rlnPhaseShift=np.rad2deg(c.phase_shift.double().numpy()),
                   rlnCtfBfactor=c.bfactor.double().numpy())
    for k, v in particles.extra.items():
        if k.startswith("rln") and k not in CONSUMED and k not in out:
            out[k] = v
    if version == "3.0":
        if c is not None:
            out.update(rlnVoltage=c.voltage.double().numpy(), rlnSphericalAberration=c.cs.double().numpy(),
                       rlnAmplitudeContrast=c.amplitude_contrast.double().numpy())
        # detector pixel (µm) · 10⁴ / magnification = Å/px
        out.update(rlnDetectorPixelSize=np.full(len(particles), px), rlnMagnification=np.full(len(particles), 10000.0))
        return {"": out}
    group, table = _optics_groups(particles)
    out["rlnOpticsGroup"] = group
    optics = {
        "rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(len(table))],
        "rlnOpticsGroup": np.arange(1, len(table) + 1),
        "rlnImagePixelSize": np.full(len(table), px),
        "rlnImageSize": np.full(len(table), particles.box_size),
        "rlnImageDimensionality": np.full(len(table), 2),
        "rlnVoltage": table[:, 0], "rlnSphericalAberration": table[:, 1], "rlnAmplitudeContrast": table[:, 2],
    }
    return {"optics": optics, "particles": out}


def write_star(path: str | os.PathLike, particles: Particles, version: str = "3.1") -> Path:
    """Write ``particles`` as a RELION STAR file (3.1: data_optics + data_particles; 3.0: one
    table), atomically. Stack paths are written relative to the STAR file's folder when the stacks
    lie below it, else absolute. Optics groups are the distinct (voltage, Cs, Q0) triples."""
    path = Path(path)
    particles.validate()
    blocks = star_table(particles, path.parent, version)
    with atomic_path(path) as tmp:
        write_loops(tmp, blocks)
    return path

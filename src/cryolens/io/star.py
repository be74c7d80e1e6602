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

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch

from ..errors import InputError
from ..imaging.rotations import euler_to_matrix, matrix_to_euler
from .files import atomic_path, require_file
from .particles import Particles, ctf_from_columns, relative_or_absolute, resolve_stacks, stack_info_for

log = logging.getLogger(__name__)

ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGINS_A = ("rlnOriginXAngst", "rlnOriginYAngst")
ORIGINS_PX = ("rlnOriginX", "rlnOriginY")
CTF_PARTICLE = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor")
OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
          "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageDimensionality",
          "rlnOpticsGroup", "rlnOpticsGroupName")
# columns a reader turns into fields; never copied into ``extra`` and never written twice
_CONSUMED = set(("rlnImageName",) + ANGLES + ORIGINS_A + ORIGINS_PX + CTF_PARTICLE + OPTICS)


def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable STAR file ({' '.join(str(e).split())})") from None
    tables = {k: v for k, v in (blocks or {}).items() if isinstance(v, pd.DataFrame)}
    if not tables:
        raise InputError(f"{path}: no data table found (not a STAR file?)")
    return tables


def _particle_table(path: Path, tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    optics = tables.get("optics")
    if "particles" in tables:
        return tables["particles"], optics
    for name, t in tables.items():
        if name != "optics" and "rlnImageName" in t.columns:
            return t, optics
    others = [t for name, t in tables.items() if name != "optics"]
    if not others:
        raise InputError(f"{path}: has only a data_optics table, no particles")
    return others[0], optics


class _Columns:
    """Per-particle values of a label, from the particle table or broadcast from its optics group."""

    def __init__(self, path: Path, df: pd.DataFrame, optics: pd.DataFrame | None):
        self.path, self.df, self.n = path, df, len(df)
        self.optics_rows: np.ndarray | None = None
        self.optics = optics
        if optics is not None and len(optics):
            if "rlnOpticsGroup" in df.columns and "rlnOpticsGroup" in optics.columns:
                lookup = pd.Series(np.arange(len(optics)), index=optics["rlnOpticsGroup"].to_numpy())
                if not lookup.index.is_unique:
                    raise InputError(f"{path}: data_optics lists an optics group twice")
                rows = df["rlnOpticsGroup"].map(lookup).to_numpy(dtype=np.float64)
                missing = np.nonzero(np.isnan(rows))[0]
                if missing.size:
                    r = int(missing[0])
                    raise InputError(f"{path}: row {r + 1}: optics group {df['rlnOpticsGroup'].iloc[r]} "
                                     "is not in data_optics")
                self.optics_rows = rows.astype(np.int64)
            elif len(optics) == 1:
                self.optics_rows = np.zeros(self.n, dtype=np.int64)
            else:
                raise InputError(f"{path}: {len(optics)} optics groups but no rlnOpticsGroup column in the particles")

    def has(self, name: str) -> bool:
        return name in self.df.columns or (self.optics_rows is not None and name in self.optics.columns)

    def get(self, name: str, dtype=np.float64) -> np.ndarray:
        if name in self.df.columns:
            col = self.df[name]
        else:
            col = self.optics[name].iloc[self.optics_rows]
        try:
            return col.to_numpy(dtype=dtype)
        except (TypeError, ValueError):
            raise InputError(f"{self.path}: column {name} has values that are not numbers") from None

    def finite(self, name: str) -> np.ndarray:
        v = self.get(name)
        bad = np.nonzero(~np.isfinite(v))[0]
        if bad.size:
            raise InputError(f"{self.path}: row {bad[0] + 1}: {name} is not a finite number")
        return v


def _constant(path: Path, name: str, values: np.ndarray) -> float:
    if not np.allclose(values, values[0], rtol=1e-4, atol=0):
        raise InputError(f"{path}: {name} differs between particles ({values.min():g} to {values.max():g}); "
                         "cryolens needs one pixel size and box per dataset")
    return float(values[0])


def _parse_image_names(path: Path, names: pd.Series) -> tuple[list[str], np.ndarray]:
    """``index@path`` strings → (path strings, 0-based indices). A name without ``@`` is image 0."""
    stacks: list[str] = []
    index = np.empty(len(names), dtype=np.int64)
    for r, s in enumerate(names.astype(str).tolist()):
        num, at, file = s.partition("@")
        if not at:
            stacks.append(s)
            index[r] = 0
            continue
        try:
            k = int(num)
        except ValueError:
            raise InputError(f"{path}: row {r + 1}: rlnImageName {s!r} is not index@path") from None
        if k < 1:
            raise InputError(f"{path}: row {r + 1}: rlnImageName {s!r} has index {k}; RELION counts from 1")
        stacks.append(file)
        index[r] = k - 1
    return stacks, index


def read_star(path: str | os.PathLike) -> Particles:
    """Read a RELION particle STAR file (3.0, 3.1+, RELION 5) into :class:`Particles`.

    Poses and CTF are optional (``None`` when their columns are absent). Raises
    :class:`InputError` for a missing ``rlnImageName`` column, a missing stack, a row whose index is
    beyond its stack's end, inconsistent pixel or box sizes, or an odd box.
    """
    path = require_file(path, "STAR file")
    df, optics = _particle_table(path, _read_blocks(path))
    if "rlnImageName" not in df.columns:
        raise InputError(f"{path}: missing column rlnImageName")
    if len(df) == 0:
        raise InputError(f"{path}: no particles in the table")
    df = df.reset_index(drop=True)
    cols = _Columns(path, df, optics)
    n = len(df)

    # stacks: STAR file's folder first, then the current folder
    stack_names, image_index = _parse_image_names(path, df["rlnImageName"])
    bases = [path.parent.resolve(), Path.cwd().resolve()]
    image_files, file_index = resolve_stacks(stack_names, bases, str(path), log)

    # pixel size and box
    if cols.has("rlnImagePixelSize"):
        px = _constant(path, "rlnImagePixelSize", cols.finite("rlnImagePixelSize"))
    elif cols.has("rlnPixelSize"):
        px = _constant(path, "rlnPixelSize", cols.finite("rlnPixelSize"))
    elif cols.has("rlnDetectorPixelSize") and cols.has("rlnMagnification"):
        # RELION 3.0: detector pixel in µm, magnification dimensionless → Å/px
        px = _constant(path, "pixel size", cols.finite("rlnDetectorPixelSize") * 1e4 / cols.finite("rlnMagnification"))
    else:
        _, _, px = stack_info_for(path, image_files[0])
        if px <= 0:
            raise InputError(f"{path}: no pixel size (no rlnImagePixelSize, rlnDetectorPixelSize/rlnMagnification, "
                             f"and {image_files[0]} has no voxel size)")
        log.info("%s: no pixel size column; using %.4f Å from %s", path, px, image_files[0])
    if cols.has("rlnImageSize"):
        box = int(round(_constant(path, "rlnImageSize", cols.finite("rlnImageSize"))))
    else:
        _, box, _ = stack_info_for(path, image_files[0])
    if box % 2:
        raise InputError(f"{path}: box size {box} is odd; cryolens needs an even box")

    # poses: R = Rz(rot) Ry(tilt) Rz(psi), degrees → radians
    rotations = None
    consumed = {"rlnImageName", "rlnOpticsGroup"} | {c for c in OPTICS if c in df.columns}
    if all(c in df.columns for c in ANGLES):
        rot, tilt, psi = (torch.as_tensor(np.deg2rad(cols.finite(c))) for c in ANGLES)
        rotations = euler_to_matrix(rot, tilt, psi).to(torch.float32)
        consumed |= set(ANGLES)
    elif any(c in df.columns for c in ANGLES):
        log.info("%s: only %s of the three Euler angles; no 3D poses read", path,
                 ", ".join(c for c in ANGLES if c in df.columns))

    # shifts: our shift = −RELION origin (in pixels)
    shifts = None
    if all(c in df.columns for c in ORIGINS_A):
        shifts = -np.stack([cols.finite(c) for c in ORIGINS_A], axis=1) / px
        consumed |= set(ORIGINS_A) | {c for c in ORIGINS_PX if c in df.columns}
    elif all(c in df.columns for c in ORIGINS_PX):
        shifts = -np.stack([cols.finite(c) for c in ORIGINS_PX], axis=1)
        consumed |= set(ORIGINS_PX)

    # CTF
    ctf = None
    if "rlnDefocusU" in df.columns:
        for need in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
            if not cols.has(need):
                raise InputError(f"{path}: has rlnDefocusU but no {need} (in the particles or data_optics)")

        def opt(name):
            return cols.finite(name) if cols.has(name) else None

        ctf = ctf_from_columns(cols.finite("rlnDefocusU"), opt("rlnDefocusV"), opt("rlnDefocusAngle"),
                               cols.finite("rlnVoltage"), cols.finite("rlnSphericalAberration"),
                               cols.finite("rlnAmplitudeContrast"), opt("rlnPhaseShift"), opt("rlnCtfBfactor"), n=n)
        consumed |= {c for c in CTF_PARTICLE if c in df.columns}

    extra = {c: df[c].to_numpy() for c in df.columns if c not in consumed}
    particles = Particles(pixel_size=px, box_size=box, image_files=image_files, image_file_index=file_index,
                          image_index=image_index, rotations=rotations,
                          shifts=None if shifts is None else torch.as_tensor(shifts, dtype=torch.float32),
                          ctf=ctf, extra=extra, source=str(path))
    return particles.validate().check_stacks()


def _optics_groups(particles: Particles) -> tuple[np.ndarray, np.ndarray]:
    """Group particles by (voltage, Cs, Q0): ``(group id per particle (1-based), one row per group)``."""
    if particles.ctf is None:
        return np.ones(len(particles), dtype=np.int64), np.array([[300.0, 2.7, 0.1]])
    keys = np.stack([particles.ctf.voltage.double().numpy(), particles.ctf.cs.double().numpy(),
                     particles.ctf.amplitude_contrast.double().numpy()], axis=1).round(6)
    table, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1) + 1, table


def star_table(particles: Particles, star_dir: str | os.PathLike, version: str = "3.1") -> dict[str, pd.DataFrame]:
    """The STAR blocks (``{"optics": ..., "particles": ...}`` for 3.1, ``{"": ...}`` for 3.0) that
    :func:`write_star` writes; stack paths relative to ``star_dir`` when below it."""
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
        if k.startswith("rln") and k not in _CONSUMED and k not in out:
            out[k] = v
    if version == "3.0":
        if c is not None:
            out.update(rlnVoltage=c.voltage.double().numpy(), rlnSphericalAberration=c.cs.double().numpy(),
                       rlnAmplitudeContrast=c.amplitude_contrast.double().numpy())
        # detector pixel (µm) · 10⁴ / magnification = Å/px
        out.update(rlnDetectorPixelSize=np.full(len(particles), px), rlnMagnification=np.full(len(particles), 10000.0))
        return {"": pd.DataFrame(out)}
    group, table = _optics_groups(particles)
    out["rlnOpticsGroup"] = group
    optics = pd.DataFrame({
        "rlnOpticsGroupName": [f"opticsGroup{g + 1}" for g in range(len(table))],
        "rlnOpticsGroup": np.arange(1, len(table) + 1),
        "rlnImagePixelSize": np.full(len(table), px),
        "rlnImageSize": np.full(len(table), particles.box_size),
        "rlnImageDimensionality": np.full(len(table), 2),
        "rlnVoltage": table[:, 0], "rlnSphericalAberration": table[:, 1], "rlnAmplitudeContrast": table[:, 2],
    })
    return {"optics": optics, "particles": pd.DataFrame(out)}


def write_star(path: str | os.PathLike, particles: Particles, version: str = "3.1") -> Path:
    """Write ``particles`` as a RELION STAR file (3.1: data_optics + data_particles; 3.0: one
    table), atomically. Stack paths are written relative to the STAR file's folder when the stacks
    lie below it, else absolute. Optics groups are the distinct (voltage, Cs, Q0) triples."""
    path = Path(path)
    particles.validate()
    blocks = star_table(particles, path.parent, version)
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f")
    return path

"""The particle table of a RELION STAR file as numpy columns in cryolens' units, without torch.

:func:`~cryolens.io.star.read_star` builds :class:`~cryolens.io.particles.Particles` from it; a light
command (``cryolens info``) describes it without importing torch. The conversions are those of
:mod:`cryolens.io.star` (docs/CONVENTIONS.md): shifts ``= −rlnOrigin{X,Y}Angst / pixel_size`` (3.1+) or
``−rlnOrigin{X,Y}`` (3.0, px); CTF angles degrees → radians; stacks resolved against the STAR file's
folder first, then the current folder; the pixel size from ``rlnImagePixelSize``, ``rlnPixelSize``,
``rlnDetectorPixelSize · 10⁴ / rlnMagnification`` or the stack header.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import require_file
from .metadata import check_stack_rows, ctf_columns, resolve_stacks, stack_info_for
from .star_text import Loop, read_loops

log = logging.getLogger("cryolens.io.star")

ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGINS_A = ("rlnOriginXAngst", "rlnOriginYAngst")
ORIGINS_PX = ("rlnOriginX", "rlnOriginY")
CTF_PARTICLE = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor")
OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
          "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageDimensionality",
          "rlnOpticsGroup", "rlnOpticsGroupName")
# columns a reader turns into fields; never copied into ``extra`` and never written twice
CONSUMED = set(("rlnImageName",) + ANGLES + ORIGINS_A + ORIGINS_PX + CTF_PARTICLE + OPTICS)


@dataclass
class StarTable:
    """A STAR file's ``N`` particles, checked against their stacks' headers.

    pixel_size: Å/px; box_size: ``D`` (even). image_files: absolute stack paths; image_file_index,
    image_index: ``(N,)`` int64, each row's stack and 0-based image. angles_deg: ``rlnAngleRot``,
    ``rlnAngleTilt``, ``rlnAnglePsi`` as three ``(N,)`` float64 arrays (degrees), or None. shifts: ``(N, 2)``
    float64 px ``(x, y)`` (cryolens' sign), or None. ctf: the :class:`~cryolens.imaging.ctf.CTFParams` fields as
    ``(N,)`` float64 arrays (radians for angles), or None. extra: the other particle columns.
    """

    path: Path
    pixel_size: float
    box_size: int
    image_files: list[str]
    image_file_index: np.ndarray
    image_index: np.ndarray
    angles_deg: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    shifts: np.ndarray | None
    ctf: dict[str, np.ndarray] | None
    extra: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.image_index.shape[0])


def _read_blocks(path: Path) -> dict[str, Loop]:
    try:
        tables = read_loops(path)
    except Exception as e:
        raise InputError(f"{path}: not a readable STAR file ({' '.join(str(e).split())})") from None
    if not tables:
        raise InputError(f"{path}: no data table found (not a STAR file?)")
    return tables


def _particle_table(path: Path, tables: dict[str, Loop]) -> tuple[Loop, Loop | None]:
    optics = tables.get("optics")
    if "particles" in tables:
        return tables["particles"], optics
    for name, t in tables.items():
        if name != "optics" and "rlnImageName" in t:
            return t, optics
    others = [t for name, t in tables.items() if name != "optics"]
    if not others:
        raise InputError(f"{path}: has only a data_optics table, no particles")
    return others[0], optics


def _rows(table: Loop) -> int:
    return len(next(iter(table.values()))) if table else 0


def _group_key(v) -> float | str:
    """An optics group label as a lookup key: numbers by value (1 and 1.0 are one group), else the text."""
    return float(v) if isinstance(v, (int, float)) else str(v)


class _Columns:
    """Per-particle values of a label, from the particle table or broadcast from its optics group."""

    def __init__(self, path: Path, df: Loop, optics: Loop | None):
        self.path, self.df, self.n = path, df, _rows(df)
        self.optics_rows: np.ndarray | None = None
        self.optics = optics
        if optics is not None and _rows(optics):
            if "rlnOpticsGroup" in df and "rlnOpticsGroup" in optics:
                groups = [_group_key(g) for g in optics["rlnOpticsGroup"].tolist()]
                lookup = {g: k for k, g in enumerate(groups)}
                if len(lookup) != len(groups):
                    raise InputError(f"{path}: data_optics lists an optics group twice")
                rows = np.array([lookup.get(_group_key(g), -1) for g in df["rlnOpticsGroup"].tolist()],
                                dtype=np.int64)
                missing = np.nonzero(rows < 0)[0]
                if missing.size:
                    r = int(missing[0])
                    raise InputError(f"{path}: row {r + 1}: optics group {df['rlnOpticsGroup'][r]} "
                                     "is not in data_optics")
                self.optics_rows = rows
            elif _rows(optics) == 1:
                self.optics_rows = np.zeros(self.n, dtype=np.int64)
            else:
                raise InputError(f"{path}: {_rows(optics)} optics groups but no rlnOpticsGroup column in the "
                                 "particles")

    def has(self, name: str) -> bool:
        return name in self.df or (self.optics_rows is not None and name in self.optics)

    def get(self, name: str, dtype=np.float64) -> np.ndarray:
        col = self.df[name] if name in self.df else self.optics[name][self.optics_rows]
        try:
            return np.asarray(col, dtype=dtype)
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


def _parse_image_names(path: Path, names: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``index@path`` strings → (path strings, 0-based indices). A name without ``@`` is image 0."""
    stacks: list[str] = []
    index = np.empty(len(names), dtype=np.int64)
    for r, s in enumerate(str(v) for v in names.tolist()):
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


def _pixel_and_box(path: Path, cols: _Columns, first_stack: str) -> tuple[float, int]:
    """Pixel size (Å) and box (px, even) from the columns, else from the first stack's header."""
    if cols.has("rlnImagePixelSize"):
        px = _constant(path, "rlnImagePixelSize", cols.finite("rlnImagePixelSize"))
    elif cols.has("rlnPixelSize"):
        px = _constant(path, "rlnPixelSize", cols.finite("rlnPixelSize"))
    elif cols.has("rlnDetectorPixelSize") and cols.has("rlnMagnification"):
        # RELION 3.0: detector pixel in µm, magnification dimensionless → Å/px
        px = _constant(path, "pixel size", cols.finite("rlnDetectorPixelSize") * 1e4 / cols.finite("rlnMagnification"))
    else:
        _, _, px = stack_info_for(path, first_stack)
        if px <= 0:
            raise InputError(f"{path}: no pixel size (no rlnImagePixelSize, rlnDetectorPixelSize/rlnMagnification, "
                             f"and {first_stack} has no voxel size)")
        log.info("%s: no pixel size column; using %.4f Å from %s", path, px, first_stack)
    if not px > 0:
        raise InputError(f"{path}: pixel size {px} Å is not positive")
    if cols.has("rlnImageSize"):
        box = int(round(_constant(path, "rlnImageSize", cols.finite("rlnImageSize"))))
    else:
        _, box, _ = stack_info_for(path, first_stack)
    if box % 2:
        raise InputError(f"{path}: box size {box} is odd; cryolens needs an even box")
    return px, box


def _ctf(path: Path, cols: _Columns) -> dict[str, np.ndarray] | None:
    if "rlnDefocusU" not in cols.df:
        return None
    for need in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if not cols.has(need):
            raise InputError(f"{path}: has rlnDefocusU but no {need} (in the particles or data_optics)")

    def opt(name):
        return cols.finite(name) if cols.has(name) else None

    return ctf_columns(cols.finite("rlnDefocusU"), opt("rlnDefocusV"), opt("rlnDefocusAngle"),
                       cols.finite("rlnVoltage"), cols.finite("rlnSphericalAberration"),
                       cols.finite("rlnAmplitudeContrast"), opt("rlnPhaseShift"), opt("rlnCtfBfactor"), n=cols.n)


def read_star_table(path: str | os.PathLike) -> StarTable:
    """Read a RELION particle STAR file (3.0, 3.1+, RELION 5) into a :class:`StarTable`.

    Raises :class:`InputError` for a missing ``rlnImageName`` column, a missing stack, a row whose index
    is beyond its stack's end, a stack whose box differs, inconsistent pixel or box sizes, or an odd box.
    """
    path = require_file(path, "STAR file")
    df, optics = _particle_table(path, _read_blocks(path))
    if "rlnImageName" not in df:
        raise InputError(f"{path}: missing column rlnImageName")
    if _rows(df) == 0:
        raise InputError(f"{path}: no particles in the table")
    cols = _Columns(path, df, optics)

    # stacks: STAR file's folder first, then the current folder
    stack_names, image_index = _parse_image_names(path, df["rlnImageName"])
    bases = [path.parent.resolve(), Path.cwd().resolve()]
    image_files, file_index = resolve_stacks(stack_names, bases, str(path), log)
    px, box = _pixel_and_box(path, cols, image_files[0])

    angles = None
    consumed = {"rlnImageName", "rlnOpticsGroup"} | {c for c in OPTICS if c in df}
    if all(c in df for c in ANGLES):
        angles = tuple(cols.finite(c) for c in ANGLES)
        consumed |= set(ANGLES)
    elif any(c in df for c in ANGLES):
        log.info("%s: only %s of the three Euler angles; no 3D poses read", path,
                 ", ".join(c for c in ANGLES if c in df))

    # shifts: our shift = −RELION origin (in pixels)
    shifts = None
    if all(c in df for c in ORIGINS_A):
        shifts = -np.stack([cols.finite(c) for c in ORIGINS_A], axis=1) / px
        consumed |= set(ORIGINS_A) | {c for c in ORIGINS_PX if c in df}
    elif all(c in df for c in ORIGINS_PX):
        shifts = -np.stack([cols.finite(c) for c in ORIGINS_PX], axis=1)
        consumed |= set(ORIGINS_PX)

    ctf = _ctf(path, cols)
    consumed |= {c for c in CTF_PARTICLE if c in df}
    extra = {c: df[c] for c in df if c not in consumed}
    file_index = np.asarray(file_index, dtype=np.int64).reshape(-1)
    check_stack_rows(str(path), image_files, file_index, image_index, box)
    return StarTable(path=path, pixel_size=px, box_size=box, image_files=image_files, image_file_index=file_index,
                     image_index=image_index, angles_deg=angles, shifts=shifts, ctf=ctf, extra=extra)

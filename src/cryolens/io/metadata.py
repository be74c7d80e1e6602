"""Torch-free helpers of the particle metadata readers (STAR, cryoSPARC, cryoDRGN): stack paths, stack
headers, and CTF columns in cryolens units. A light command (``cryolens info``) uses them without
importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .mrc import stack_info


def stack_info_for(source: str | os.PathLike, stack: str | os.PathLike) -> tuple[int, int, float]:
    """:func:`~cryolens.io.mrc.stack_info` of a stack named in metadata file ``source``; errors
    name both files."""
    try:
        return stack_info(stack)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def relative_or_absolute(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """``path`` relative to folder ``start`` when it lies below it, else absolute."""
    p, s = Path(path).resolve(), Path(start).resolve()
    try:
        return str(p.relative_to(s))
    except ValueError:
        return str(p)


def resolve_stack_path(name: str, bases: list[Path], source: str, logger=None) -> Path:
    """Find stack ``name`` (as written in metadata file ``source``): absolute as is, relative tried
    against each folder of ``bases`` in turn. Logs which folder was used when it is not the first;
    raises :class:`InputError` when none has it."""
    p = Path(name)
    if p.is_absolute():
        if p.is_file():
            return p
        raise InputError(f"{source}: stack {name} not found")
    tried = []
    for i, base in enumerate(bases):
        cand = base / p
        tried.append(str(base))
        if cand.is_file():
            if logger is not None:
                if i > 0:
                    logger.warning("%s: stack %s is not beside the metadata file; using %s", source, name, cand)
                else:
                    others = [b / p for b in bases[1:] if (b / p).is_file() and not (b / p).samefile(cand)]
                    if others:
                        logger.warning("%s: stack %s exists both at %s and %s; using the first (beside the "
                                       "metadata file)", source, name, cand, others[0])
            return cand.resolve()
    raise InputError(f"{source}: stack {name} not found (looked in {', '.join(dict.fromkeys(tried))})")


def resolve_stacks(names, bases: list[Path], source: str, logger=None) -> tuple[list[str], np.ndarray]:
    """Resolve the stack name of every row (``(N,)`` strings) against ``bases`` in order.

    Returns ``(image_files, file_index)``: the unique stacks as absolute paths and each row's index
    into them. A missing stack raises :class:`InputError` naming ``source`` and the first row
    (1-based) that refers to it.
    """
    unique, file_index = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    image_files = []
    for k, name in enumerate(unique):
        try:
            image_files.append(str(resolve_stack_path(str(name), bases, source, logger)))
        except InputError as e:
            row = int(np.nonzero(file_index == k)[0][0])
            raise InputError(f"{e} (row {row + 1})") from None
    return image_files, file_index


def check_stack_rows(name: str, image_files: list[str], image_file_index: np.ndarray, image_index: np.ndarray,
                     box: int) -> None:
    """Open every stack's header and check its box is ``box`` and every row's image index is inside it.

    ``image_file_index``, ``image_index``: ``(N,)`` int, each row's stack and 0-based image. Raises
    :class:`InputError` naming ``name`` (the metadata file), the row (1-based) and the stack.
    """
    order = np.argsort(image_file_index, kind="stable")  # rows grouped by stack, in row order
    bounds = np.searchsorted(image_file_index[order], np.arange(len(image_files) + 1))
    for f, path in enumerate(image_files):
        rows = order[bounds[f]:bounds[f + 1]]
        if rows.size == 0:
            continue
        try:
            n_img, d, _ = stack_info(path)
        except InputError as e:
            raise InputError(f"{name}: row {rows[0] + 1}: {e}") from None
        if d != box:
            raise InputError(f"{name}: stack {path} has {d} px images, the metadata says {box}")
        bad = rows[image_index[rows] >= n_img]
        if bad.size:
            r = int(bad.min())
            raise InputError(f"{name}: row {r + 1} refers to image {int(image_index[r]) + 1} of {path}, "
                             f"which has only {n_img} images")


def ctf_columns(defocus_u, defocus_v=None, defocus_angle_deg=None, voltage=None, cs=None, amplitude_contrast=None,
                phase_shift_deg=None, bfactor=None, n: int | None = None) -> dict[str, np.ndarray]:
    """The fields of :class:`~cryolens.imaging.ctf.CTFParams` as ``(N,)`` float64 arrays from file columns
    in RELION units (Å, kV, mm, Å², angles in degrees → radians). Missing optional columns: ``V = U``,
    angle 0, 300 kV, Cs 2.7 mm, Q0 0.1, phase shift 0, B 0."""
    du = np.asarray(defocus_u, dtype=np.float64).reshape(-1)
    n = du.shape[0] if n is None else n

    def col(v, default):
        return np.broadcast_to(np.asarray(default if v is None else v, dtype=np.float64), (n,)).copy()

    return {"defocus_u": col(du, 0.0), "defocus_v": col(defocus_v, du),
            "defocus_angle": np.deg2rad(col(defocus_angle_deg, 0.0)), "voltage": col(voltage, 300.0),
            "cs": col(cs, 2.7), "amplitude_contrast": col(amplitude_contrast, 0.1),
            "phase_shift": np.deg2rad(col(phase_shift_deg, 0.0)), "bfactor": col(bfactor, 0.0)}

"""Convert particle metadata between RELION STAR, cryoSPARC ``.cs`` and cryoDRGN pickles.

The output format follows the output's suffix: ``.star`` (RELION 3.1, or 3.0 on request),
``.cs`` (cryoSPARC), ``.pkl`` (cryoDRGN pose pickle). A cryoDRGN CTF pickle is written with
``ctf_out`` (and poses with ``poses_out``), alone or beside another output. Images are never
copied: every output points at the input's stacks. No input file is ever overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .cryodrgn import write_cryodrgn_ctf, write_cryodrgn_poses
from .cryosparc import write_cs
from .dataset import read_particles
from .particles import Particles
from .star import write_star

OUTPUT_SUFFIXES = (".star", ".cs", ".pkl")


def write_particles(path: str | os.PathLike, particles: Particles, star_version: str = "3.1") -> Path:
    """Write ``particles`` in the format of ``path``'s suffix (``.star``, ``.cs``, ``.pkl`` = poses)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".star":
        return write_star(path, particles, version=star_version)
    if suffix == ".cs":
        return write_cs(path, particles)
    if suffix == ".pkl":
        return write_cryodrgn_poses(path, particles)
    raise InputError(f"{path}: unknown output type {suffix or '(no suffix)'}; expected one of "
                     + ", ".join(OUTPUT_SUFFIXES))


def convert(src: str | os.PathLike, dst: str | os.PathLike | None = None, poses: str | os.PathLike | None = None,
            ctf: str | os.PathLike | None = None, poses_out: str | os.PathLike | None = None,
            ctf_out: str | os.PathLike | None = None, star_version: str = "3.1") -> tuple[Particles, list[Path]]:
    """Read ``src`` (``.star``, ``.cs``, or ``.mrcs`` with cryoDRGN ``poses`` / ``ctf`` pickles) and
    write ``dst`` and/or the cryoDRGN pickles ``poses_out`` / ``ctf_out``.

    Returns the particles read and the paths written. Raises :class:`InputError` when nothing is
    asked, when an output would overwrite an input, or when the input lacks what an output needs
    (poses for a pose pickle, a CTF for a CTF pickle).
    """
    outputs = [Path(p) for p in (dst, poses_out, ctf_out) if p is not None]
    if not outputs:
        raise InputError(f"{src}: no output given (an output file, poses_out or ctf_out)")
    if dst is not None and Path(dst).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"{dst}: unknown output type {Path(dst).suffix or '(no suffix)'}; expected one of "
                         + ", ".join(OUTPUT_SUFFIXES))
    inputs = [Path(p).resolve() for p in (src, poses, ctf) if p is not None]
    resolved = [o.resolve() for o in outputs]
    for o, r in zip(outputs, resolved, strict=True):
        if r in inputs:
            raise InputError(f"{o}: is an input; refusing to overwrite it")
    if len(set(resolved)) != len(resolved):
        raise InputError(f"{outputs[0]}: the same file is named as two outputs")
    particles = read_particles(src, poses=poses, ctf=ctf)
    # check everything the outputs need before writing any of them
    wants_poses = poses_out is not None or (dst is not None and Path(dst).suffix.lower() == ".pkl")
    if wants_poses and particles.rotations is None:
        raise InputError(f"{src}: has no poses to write to a cryoDRGN pose pickle")
    if ctf_out is not None and particles.ctf is None:
        raise InputError(f"{src}: has no CTF parameters to write to a cryoDRGN CTF pickle")
    written = []
    if dst is not None:
        written.append(write_particles(dst, particles, star_version))
    if poses_out is not None:
        written.append(write_cryodrgn_poses(poses_out, particles))
    if ctf_out is not None:
        written.append(write_cryodrgn_ctf(ctf_out, particles))
    return particles, written

"""Tiny test data made on the fly: stacks, random particle metadata, hand-written STAR files.

Poses come from scipy (``Rotation.random``), an implementation independent of cryolens'.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from scipy.spatial.transform import Rotation

from cryolens.imaging.ctf import CTFParams
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_stack(path, n: int = 20, d: int = 16, pixel_size: float = 1.5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_stack(path, rng.normal(size=(n, d, d)).astype(np.float32), pixel_size)
    return Path(path)


def random_particles(stack, n: int = 20, d: int = 16, pixel_size: float = 1.5, seed: int = 0,
                     bfactor: bool = True) -> Particles:
    """Random poses (scipy), shifts, CTFs (two optics settings) and extra columns for ``n`` images."""
    rng = np.random.default_rng(seed)
    rot = Rotation.random(n, random_state=seed).as_matrix()
    volt = np.where(np.arange(n) % 3 == 0, 200.0, 300.0)
    ctf = CTFParams(*[torch.as_tensor(v, dtype=torch.float32) for v in (
        rng.uniform(8000, 25000, n), rng.uniform(8000, 25000, n), rng.uniform(-np.pi, np.pi, n) % np.pi,
        volt, np.where(volt == 200.0, 2.0, 2.7), np.full(n, 0.07), rng.uniform(0, 1.5, n),
        rng.uniform(0, 80, n) if bfactor else np.zeros(n))])
    return Particles(
        pixel_size=pixel_size, box_size=d, image_files=[str(Path(stack).resolve())],
        image_file_index=np.zeros(n, dtype=np.int64), image_index=rng.permutation(n),
        rotations=torch.as_tensor(rot, dtype=torch.float32),
        shifts=torch.as_tensor(rng.uniform(-4, 4, (n, 2)), dtype=torch.float32), ctf=ctf,
        extra={"rlnClassNumber": rng.integers(1, 4, n), "rlnRandomSubset": np.arange(n) % 2 + 1})


def euler_table(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 3)`` RELION angles (degrees) from scipy intrinsic ZYZ and their matrices."""
    r = Rotation.random(n, random_state=seed)
    return r.as_euler("ZYZ", degrees=True), r.as_matrix()


def assert_particles_close(a: Particles, b: Particles, tol: float = 1e-5, ctf_fields=None,
                           same_images: bool = True) -> None:
    """Same images, rotations, shifts (px) and CTF to ``tol`` (relative for defocus / voltage)."""
    assert len(a) == len(b)
    assert a.box_size == b.box_size
    assert a.pixel_size == pytest.approx(b.pixel_size, rel=1e-6)
    if same_images:
        assert [a.image_path(i) for i in range(len(a))] == [b.image_path(i) for i in range(len(b))]
        np.testing.assert_array_equal(a.image_index, b.image_index)
    torch.testing.assert_close(a.rotations, b.rotations, atol=tol, rtol=0)
    torch.testing.assert_close(a.shifts, b.shifts, atol=tol * 10, rtol=tol)
    fields = ctf_fields or list(a.ctf.as_dict())
    for name in fields:
        x, y = getattr(a.ctf, name).double(), getattr(b.ctf, name).double()
        if name in ("defocus_angle", "phase_shift"):
            torch.testing.assert_close(x, y, atol=tol, rtol=0, msg=name)
        else:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=name)


def write_star_by_hand(path, blocks: dict[str, dict]) -> Path:
    """A STAR file written with the ``starfile`` package directly (not cryolens' writer)."""
    starfile.write({k: pd.DataFrame(v) for k, v in blocks.items()}, path)
    return Path(path)


def require_program(name: str) -> str:
    """Path of a RELION program; the test using it carries ``@pytest.mark.relion``, whose gate in
    tests/conftest.py skips (or in CI fails) it when RELION is missing."""
    path = shutil.which(name)
    assert path is not None, f"{name} not found"
    return path

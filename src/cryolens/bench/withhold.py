"""What a benchmark task withholds from a method: the particles a recipe is given."""

from __future__ import annotations


def strip_unknown(particles, known):
    """A copy of ``particles`` holding only what ``known`` gives: images, pixel size, and the poses
    (rotations, shifts) and CTF when known; extra columns are dropped."""
    from ..io.particles import Particles

    return Particles(pixel_size=particles.pixel_size, box_size=particles.box_size,
                     image_files=list(particles.image_files), image_file_index=particles.image_file_index.copy(),
                     image_index=particles.image_index.copy(),
                     rotations=particles.rotations.clone() if known.poses and particles.rotations is not None else None,
                     shifts=particles.shifts.clone() if known.poses and particles.shifts is not None else None,
                     ctf=particles.ctf if known.ctf else None, extra={}, source=particles.source)

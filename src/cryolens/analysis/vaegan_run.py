"""``cryolens analyze`` of a ``cryovaegan`` run: a 2D model, so no maps — the in-plane angle and the defocus read
off its latents, and the latent plots coloured by them."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..io.particles import Particles
from ..io.runfolder import RunFolder
from ..methods.cryovaegan import readouts
from .latent_plots import plot_embedding
from .latent_run import analyze_latents


def analyze_vaegan_run(run_dir: str | os.PathLike, particles: Particles, values: dict[str, np.ndarray] | None = None,
                       **options) -> dict:
    """``cryolens analyze`` of a cryovaegan run: the read-outs of its ``z.npy``
    (:func:`~cryolens.methods.cryovaegan.readouts`; ``particles``: the run's, in its order) saved as
    ``analysis/readouts.npz`` (``angle_deg``, ``defocus_coordinate``, ``defocus``) and the latent analysis of
    :func:`~cryolens.analysis.latent_run.analyze_latents` (no maps: the model is 2D) with the plots coloured by
    the read-out angle, the defocus and any ``values``, and ``latent_angle_circle.png``: the spectral pair the angle
    is read in (a circle when the read-out can be trusted), coloured by the defocus. ``options`` go to
    ``analyze_latents``. Returns its summary with the read-out metrics."""
    run = RunFolder(run_dir)
    z = np.load(run.path("z.npy"))
    if len(z) != len(particles):
        raise InputError(f"{particles.name}: {len(particles)} particles for the run's {len(z)} latents")
    metrics, columns, read = readouts(z, particles)
    defocus = read["defocus"]
    i, j = (k + 1 for k in read["angle_pair"])
    plane = read["angle_plane"] / read["angle_plane"].std()  # unitless coordinates: plain tick labels
    plot_embedding(plane, run.path("latent_angle_circle.png"), color=defocus,
                   color_label="defocus (A)", axis_labels=(f"spectral {i}", f"spectral {j}"),
                   title=f"the angle read-out's circle (radius CV {metrics['angle_circularity']:.2f})")
    colour = {"inplane_angle_readout_deg": columns["rlnCryolensLatentAngle"], "defocus_A": defocus,
              **(values or {})}
    summary = analyze_latents(z, None, run, particles.pixel_size, values=colour, particles=particles, **options)
    np.savez(run.path("analysis") / "readouts.npz", angle_deg=columns["rlnCryolensLatentAngle"],
             defocus_coordinate=columns["rlnCryolensDefocusCoordinate"], defocus=defocus)
    return {**summary, **metrics}

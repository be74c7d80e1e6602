"""Simulated datasets with ground truth.

Atomic model → map (:mod:`.density`, electron form factors), conformational heterogeneity
(:mod:`.motion`: discrete states, hinge trajectories, model lists), and the dataset writer
(:mod:`.dataset`: poses, shifts, CTF, noise at a target SNR → ``particles.mrcs``,
``particles.star`` and ``ground_truth/``).

Bundled models (``cryolens/data``, used by ``cryolens simulate --model NAME``, the demo and the
benchmarks): entries of the Protein Data Bank (wwPDB, CC0), two HIV-1 protease dimers (``4E43``, ``1hvr``)
and twelve other proteins and complexes that structural-biology packages ship as test data (adenylate
kinase closed and open, enolase, a DD-peptidase, a methyltransferase with DNA, two glutamate-receptor
domain dimers, the RuvB hexamer on a Holliday junction, ubiquitin, HIV-1 integrase, mTOR–mLST8 and an MD
frame of rhodopsin). ``cryolens/data/README.md`` gives each one's source, licence and checksum;
:func:`bundled_model` gives their paths.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .dataset import read_ground_truth, simulate_dataset, volumes_from_models
from ..imaging.form_factor import default_blur, form_factor, form_factor_coefficients
from .density import atoms_extent, atoms_to_volume, gaussian_sum_volume, resample_map
from .nuisance import image_noise, random_ctf, random_shifts
from .motion import (TERMINAL_SHEET, Hinge, bundled_hinge, dimer_hinge, hinge_trajectory, rmsd, rotate_about_axis,
                     rotation_matrix, sample_states, select_atoms, trajectory_from_files)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUNDLED_MODELS = {"4E43": "4E43.pdb", "1HVR": "1hvr.pdb", **{name.upper(): f"{name}.pdb.gz" for name in (
    "1ake", "4ake", "3enl", "1pwc", "3mht", "3hsy", "6flr", "7pbl", "1ubi", "1bhl", "4jsv", "1u19md")}}


def bundled_model(name: str) -> Path:
    """Path of a bundled model by name (``"4E43"``, ``"1hvr"``, ``"1ake"``, ...; case-insensitive)."""
    key = name.upper().removesuffix(".GZ").removesuffix(".PDB")
    if key not in BUNDLED_MODELS:
        raise InputError(f"model {name!r}: not a bundled model (choose from {', '.join(BUNDLED_MODELS)})")
    return DATA_DIR / BUNDLED_MODELS[key]


__all__ = [
    "BUNDLED_MODELS", "DATA_DIR", "Hinge", "TERMINAL_SHEET", "atoms_extent", "atoms_to_volume", "bundled_hinge",
    "bundled_model", "default_blur",
    "dimer_hinge", "form_factor", "form_factor_coefficients", "gaussian_sum_volume", "hinge_trajectory",
    "image_noise", "random_ctf", "random_shifts", "read_ground_truth", "resample_map", "rmsd",
    "rotate_about_axis", "rotation_matrix", "sample_states", "select_atoms", "simulate_dataset",
    "trajectory_from_files", "volumes_from_models",
]

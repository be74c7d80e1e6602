"""The demo journey: atomic model → simulated dataset → back-projection → scores and plots."""

from __future__ import annotations

from pathlib import Path

import torch

from ..analysis.writer import write_run
from ..io.mrc import read_volume
from ..io.runfolder import RunFolder
from ..io.star import read_star
from ..io.atomic import read_atoms
from ..methods.registry import Known, get
from ..simulate import bundled_model
from ..simulate.dataset import simulate_dataset
from ..simulate.density import atoms_to_volume


def run_demo(run: RunFolder, model: str = "4E43", n_images: int = 2000, box: int = 64, pixel_size: float = 1.5,
             snr: float = 0.1, seed: int = 0, device=None, progress: bool = True) -> dict:
    """Simulate ``n_images`` particles of ``model`` (a bundled name or a .pdb/.cif path) into
    ``run/dataset``, back-project them from their known poses and CTFs (the ``backprojection``
    recipe), and write the run folder with the one writer. Returns the metrics."""
    path = Path(model) if Path(model).suffix else bundled_model(model)
    atoms = read_atoms(path)
    volume = atoms_to_volume(atoms, box, pixel_size, device=device)
    data_dir = simulate_dataset(run.path("dataset"), [volume], n_images, pixel_size, snr, shift_std=1.5,
                                shift_max=3.0, models=[atoms], seed=seed, device=device, progress=progress,
                                overwrite=True)
    particles = read_star(Path(data_dir) / "particles.star")
    truth, _ = read_volume(Path(data_dir) / "ground_truth" / "volume_000.mrc")
    recipe = get("backprojection")
    outputs = recipe.fit(particles, Known(), run, recipe.config({"seed": seed}), device, progress)
    return write_run(outputs, particles, run, recipe, torch.from_numpy(truth), report=False,
                     metrics={"model": str(model), "snr": snr})

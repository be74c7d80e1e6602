"""The pose diagnostic of auto-refine on a tiny set, as before issue 27 (`follow_accuracy=False`,
`posterior_sigma2=False`, `adaptive_caps=False`) and with all three on: per iteration the grid order,
half-map resolution, expected angular accuracy, local-window posterior mass and RMS angle, local σ,
significant sets at their cap, the caps and the last pass's kept posterior mass.

Data: 4E43 at D = 24, 4 Å/px, SNR 0.5, CTF, shifts ≤ 1.5 px, 300 images (seed 3); start: the truth
low-passed to 30 Å; healpix_order 2, local_order 3, max_order 4, offsets ±2 px in 1 px steps.

  OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/diag_refine_window.py
"""

from __future__ import annotations

import tempfile
import time

import torch

from cryolens.inference import autorefine as A
from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_particles
from cryolens.metrics.pose_error import pose_error_summary
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import read_ground_truth, simulate_dataset
from cryolens.simulate.density import atoms_to_volume

KEYS = ("order", "resolution_A", "accuracy_deg", "window_mass_mean", "window_rms_deg", "local_sigma_deg",
        "significant_at_cap", "max_coarse", "max_significant", "kept_mass_mean")


def main() -> None:
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), 24, 4.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = simulate_dataset(f"{tmp}/ds", vol, 300, 4.0, 0.5, shift_std=0.8, shift_max=1.5, seed=3, progress=False)
        p, gt = read_particles(out / "particles.star"), read_ground_truth(out)
        p.rotations, p.shifts = None, None
        refine_both(p, vol, gt)


def refine_both(p, vol: torch.Tensor, gt: dict) -> None:
    for follow in (False, True):  # before issue 27 (fixed schedule, σ² at the MAP pose), and now
        cfg = A.RefineConfig(initial_lowpass=30.0, healpix_order=2, local_order=3, max_order=4, offset_range=2.0,
                             offset_step=1.0, follow_accuracy=follow, posterior_sigma2=follow, adaptive_caps=follow,
                             max_iterations=12)
        t0 = time.perf_counter()
        r = A.auto_refine(p, vol, config=cfg, progress=False)
        err = pose_error_summary(r.rotations, torch.as_tensor(gt["rotations"]).float())["median_deg"]
        print(f"follow_accuracy=posterior_sigma2=adaptive_caps={follow}: {time.perf_counter() - t0:.1f} s, "
              f"median error {err:.2f}°")
        for h in r.history:
            print("  ", h["iteration"], {k: (round(h[k], 3) if isinstance(h[k], float) else h[k]) for k in KEYS})


if __name__ == "__main__":
    main()

"""The continuous-heterogeneity benchmark dataset of issue 5, made once and cached.

The bundled 4E43 HIV-1 protease dimer with its default hinge (`cryolens.simulate.bundled_hinge`:
chain B opens against chain A about the terminal β-sheet), ``n_states`` models at evenly spaced
hinge angles 0…25°, each image drawn from one state uniformly; D = 64, 1.5 Å/px, uniform poses
(known), no shifts, CTF with mean defocus 1.0–2.5 µm (astigmatism ≤ 500 Å, 300 kV, Cs 2.7 mm,
Q0 0.1), white noise at SNR 0.1. Made by the `cryolens simulate` command (in-process), so the
folder is a normal dataset: ``particles.star`` / ``.mrcs`` and ``ground_truth/`` with the map of
every state (``volume_000.mrc`` …) and, per image, ``labels`` (state index) and
``hinge_angle_deg`` in ``ground_truth.npz``.

  .venv/bin/python benchmarks/continuous_dataset.py [--n 10000] [--states 50] [--out DIR]

From Python: ``ensure_continuous_dataset(n=10000)`` returns the folder (made on first use);
``ground_truth_maps(folder)`` the ``(K, D, D, D)`` state maps and ``(N,)`` labels / angles.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"


def continuous_dir(n: int = 10000, box: int = 64, apix: float = 1.5, snr: float = 0.1, n_states: int = 50,
                   seed: int = 0) -> Path:
    return DATA / f"4E43hinge{n_states}_D{box}_apix{apix:g}_n{n}_snr{snr:g}_seed{seed}"


def ensure_continuous_dataset(n: int = 10000, box: int = 64, apix: float = 1.5, snr: float = 0.1,
                              n_states: int = 50, seed: int = 0, out: str | os.PathLike | None = None) -> Path:
    """The dataset folder (module docstring), simulated on first use (about a minute at N = 10,000)."""
    from cryolens.cli.main import main

    folder = Path(out) if out is not None else continuous_dir(n, box, apix, snr, n_states, seed)
    if (folder / "particles.star").is_file():
        return folder
    t0 = time.perf_counter()
    rc = main(["simulate", "--model", "4E43", "--motion", "hinge", "--n-states", str(n_states), "--n", str(n),
               "--box", str(box), "--apix", str(apix), "--snr", str(snr), "--seed", str(seed), "--out", str(folder),
               "--device", "cpu", "--force"])
    if rc != 0:
        raise RuntimeError(f"cryolens simulate failed with exit code {rc}")
    print(f"simulated {folder} in {time.perf_counter() - t0:.0f} s")
    return folder


def ground_truth_maps(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(maps (K, D, D, D) float32, labels (N,) state of each image, angles (N,) hinge angle in
    degrees, pixel size Å)`` of a dataset made by :func:`ensure_continuous_dataset`."""
    from cryolens.io.mrc import read_volume
    from cryolens.simulate import read_ground_truth

    gt = read_ground_truth(folder)
    vols = [read_volume(p) for p in gt["volume_files"]]
    return (np.stack([v for v, _ in vols]).astype(np.float32), gt["labels"], gt["hinge_angle_deg"],
            float(vols[0][1]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--apix", type=float, default=1.5)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--states", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="folder (default benchmarks/_data/4E43hinge…)")
    a = ap.parse_args()
    print(ensure_continuous_dataset(a.n, a.box, a.apix, a.snr, a.states, a.seed, a.out))

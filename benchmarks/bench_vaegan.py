"""`cryovaegan` on one view of a real structure with the in-plane angle and the defocus varying (issue 25's check):
circular correlation of the latent read-out angle with the true in-plane angle, and |Spearman| of the latent read-out
with the defocus (the recipe's own metrics, ``inference.vaegan.latent_readout``).

Printed beside them, from the truth (never used by the recipe): ``inplane_js``, Jammalamadaka–SenGupta's coefficient
of the same angles (the recipe reports Fisher–Lee's; JS depends on mean directions that uniform angles lack), and
``inplane_knn_ceiling``, how much of the angle the latent holds at all: the Fisher–Lee correlation of the angle
predicted from z by a 10-nearest-neighbour regression of (cos α, sin α), 5-fold cross-validated. ``--seed`` picks the
view (and the noise); ``--model`` the structure. ``inplane_median_error_deg``: the read-out angle's median error once
its offset and direction are fitted to the truth. ``--score-only`` scores a finished run's saved z again with the
current read-outs (no training).

  OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_vaegan.py --n 4000 --box 64 --apix 1.5 --snr 1 \
      --epochs 10 --out /tmp/vg
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("model", "4E43"), ("n", 4000), ("box", 64), ("apix", 1.5), ("snr", 1.0), ("epochs", 10),
                          ("seed", 0)):
        ap.add_argument(f"--{name}", type=type(default), default=default)
    ap.add_argument("--set", action="append", default=[], help="recipe option key=value")
    ap.add_argument("--out", required=True)
    ap.add_argument("--score-only", action="store_true", help="score the saved z of OUT/run again, no training")
    a = ap.parse_args()
    from cryolens.cli.main import main as cli
    from cryolens.imaging.rotations import inplane_rotation, random_rotations
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model, simulate_dataset
    from cryolens.simulate.density import atoms_to_volume

    out = Path(a.out)
    vol = atoms_to_volume(read_atoms(bundled_model(a.model)), a.box, a.apix)
    g = torch.Generator().manual_seed(a.seed)
    view = random_rotations(1, generator=g)  # one view, then a uniform in-plane angle per image
    psi = (torch.rand(a.n, generator=g) * 2 - 1) * math.pi
    data = out / "data"
    if not (data / "particles.star").exists():
        simulate_dataset(data, vol, a.n, a.apix, a.snr, rotations=view @ inplane_rotation(psi), seed=a.seed,
                         progress=False)
    run = out / "run"
    t0 = time.perf_counter()
    if not a.score_only:
        sets = [x for s in a.set for x in ("--set", s)]
        cli(["train", "cryovaegan", str(data / "particles.star"), "--out", str(run), "--epochs", str(a.epochs),
             *sets])
    wall = time.perf_counter() - t0
    print(json.dumps(scores(run, data) | {"n": a.n, "snr": a.snr, "epochs": a.epochs, "wall_s": wall}, indent=1))


def scores(run: Path, data: Path) -> dict[str, float]:
    """The recipe's read-outs of the run's saved ``z`` (``methods.cryovaegan.readouts``, the recipe's own metrics),
    ``inplane_js``, ``inplane_knn_ceiling`` and ``inplane_median_error_deg`` (module docstring)."""
    import numpy as np
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsRegressor

    from cryolens.inference.vaegan import circular_correlation, inplane_angles
    from cryolens.io.dataset import read_particles
    from cryolens.methods.cryovaegan import readouts

    z = np.load(run / "z.npy")
    particles = read_particles(data / "particles.star")
    alpha = inplane_angles(particles.rotations)
    metrics, _, r = readouts(z, particles)
    read = r["angle"]
    centred = [np.sin(t - np.arctan2(np.sin(t).sum(), np.cos(t).sum())) for t in (read, alpha)]
    js = abs((centred[0] * centred[1]).sum()) / np.sqrt((centred[0] ** 2).sum() * (centred[1] ** 2).sum())
    pred = cross_val_predict(KNeighborsRegressor(10), z, np.c_[np.cos(alpha), np.sin(alpha)], cv=5)
    # the read-out's error in degrees once its offset and direction are fitted (the mean resultant's angle)
    errs = []
    for sign in (1, -1):
        d = read - sign * alpha
        errs.append(np.abs(np.angle(np.exp(1j * (d - np.angle(np.exp(1j * d).mean()))))))
    return {**metrics, "inplane_js": float(js),
            "inplane_knn_ceiling": circular_correlation(np.arctan2(pred[:, 1], pred[:, 0]), alpha),
            "inplane_median_error_deg": float(np.degrees(np.median(min(errs, key=np.median))))}


if __name__ == "__main__":
    main()

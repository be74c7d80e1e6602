"""`cryovaegan` on one view of a real structure with the in-plane angle and the defocus varying (issue 25's check):
circular correlation of the latent read-out angle with the true in-plane angle, and |Spearman| of the latent read-out
with the defocus (the recipe's own metrics, ``inference.vaegan.latent_readout``).

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
    sets = [x for s in a.set for x in ("--set", s)]
    cli(["train", "cryovaegan", str(data / "particles.star"), "--out", str(run), "--epochs", str(a.epochs), *sets])
    m = json.loads((run / "metrics.json").read_text())
    print(json.dumps({k: m.get(k) for k in ("inplane_circular_correlation", "defocus_spearman", "defocus_pc")}
                     | {"n": a.n, "snr": a.snr, "epochs": a.epochs, "wall_s": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()

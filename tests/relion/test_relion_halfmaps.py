"""The gold-standard FSC of a low-SNR refinement against RELION's half maps from the same poses.

A refinement at SNR 0.01 (1,000 images, D 24) writes its poses and half-sets (``rlnRandomSubset``) as
STAR; ``relion_reconstruct --subset 1/2 --ctf`` reconstructs each half from them. Beyond the signal
both FSC curves must be noise around 0: ours once read ≈ 0.2–0.3 there (MAP-filtered halves,
see ``cryolens.inference.autorefine``), RELION's unfiltered halves ≈ 0.
"""

import numpy as np
import pytest
import torch

from cryolens.bench import relion
from cryolens.inference import autorefine as A
from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_particles
from cryolens.io.star import write_star
from cryolens.metrics import fsc
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import simulate_dataset
from cryolens.simulate.density import atoms_to_volume

pytestmark = pytest.mark.relion

D, PX = 24, 4.0


def test_low_snr_half_map_fsc_matches_relion_reconstruct(tmp_path):
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), D, PX)
    out = simulate_dataset(tmp_path / "ds", vol, 1000, PX, 0.01, seed=4, progress=False)
    p = read_particles(out / "particles.star")
    p.rotations, p.shifts = None, None
    cfg = A.RefineConfig(initial_lowpass=30.0, healpix_order=1, local_order=3, max_order=3, offset_range=2.0,
                         offset_step=1.0, max_iterations=4, batch_size=100, max_coarse=8, max_significant=16)
    res = A.auto_refine(p, vol, config=cfg, progress=False)
    state = {"rotations": res.rotations, "shifts": res.shifts, "half": torch.as_tensor(res.half)}
    write_star(tmp_path / "refined.star", A.poses_to_particles(p, state))
    halves = [relion.reconstruct_star("refined.star", tmp_path, ctf=True, output=f"half{s}.mrc",
                                      extra_args=["--subset", s]) for s in (1, 2)]
    theirs = np.asarray(fsc(torch.as_tensor(halves[0]), torch.as_tensor(halves[1])))
    ours = res.fsc
    assert theirs[1:4].min() > 0.5  # the low-resolution signal is there for both
    assert abs(theirs[6:].mean()) < 0.08, np.round(theirs, 2)
    data = ours[6:] != 0
    assert abs(ours[6:][data].mean() - theirs[6:][data].mean()) < 0.08, (np.round(ours, 2), np.round(theirs, 2))

"""cryoDRGN2 ab initio: the pose search between epochs, wired to the model's pose buffers, recovers the
true poses when the volume is right; the recipe runs from random poses (never seeing the metadata's
poses) and writes its poses."""

import dataclasses

import numpy as np
import torch

from cryolens.imaging import geodesic_distance
from cryolens.io.runfolder import RunFolder
from cryolens.io.star import read_star
from cryolens.methods import Known, get
from cryolens.methods.cryodrgn2 import CryoDRGN2
from cryolens.metrics.pose_error import pose_error_summary

from _drgn_data import blob_dataset, blob_volume

SMALL = {"dec_layers": 1, "dec_dim": 32, "batch_size": 16, "lr": 3e-3, "n_levels": 2, "max_shift": 1.0,
         "shift_step": 1.0, "norm_images": 64}


def test_search_with_the_true_volume_recovers_the_poses(tmp_path):
    """With the field's render replaced by the true map, one search at k_max = D/2 (grid level 4, 3.75°)
    sets ≥ 90 % of the pose buffers within 5° of the true pose (median ≤ 2.5°; the search is a heuristic
    that can lose a pose whose coarse ancestor falls out of the kept set), and those images' shifts within
    0.5 px — without an alignment: the search has the truth's frame."""
    particles, _ = blob_dataset(tmp_path, 60, 16)
    cfg = get("cryodrgn2").config(SMALL)
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = CryoDRGN2(16, particles.pixel_size, 60, cfg, "homo", blind, progress=False)
    model.set_norm(1.0)
    model.field.render = lambda z=None: blob_volume(16)[None]
    model.search(epoch=100, device="cpu")
    err = torch.rad2deg(geodesic_distance(model.pose_rotations, particles.rotations))
    good = err < 5.0
    assert float(err.median()) < 2.5 and float(good.float().mean()) >= 0.9, err
    assert float((model.pose_shifts - particles.shifts)[good].abs().max()) <= 0.5 + 1e-6


def test_recipe_runs_ab_initio_and_writes_poses(tmp_path):
    """cryodrgn2 on 64 images for 2 epochs (search at the start of epoch 2 and after the last): the poses
    written (poses.star, poses.npz) differ from the random start and match the outputs; the metadata's
    poses never reached the model (the error to them is not ~0)."""
    particles, _ = blob_dataset(tmp_path, 64, 16)
    rec = get("cryodrgn2")
    run = RunFolder(tmp_path / "run")
    cfg = rec.config({**SMALL, "epochs": 2, "n_levels": 1})
    out = rec.fit(particles, Known(poses=False), run, cfg, "cpu", False)
    assert [s["epoch"] for s in out.metrics["pose_searches"]] == [1, 2]
    npz = np.load(run.path("poses.npz"))
    np.testing.assert_allclose(npz["rotations"], out.rotations.numpy())
    star = read_star(run.path("poses.star"))
    torch.testing.assert_close(star.rotations, out.rotations, atol=1e-4, rtol=0)
    assert len(star) == 64 and out.volume.shape == (16, 16, 16)
    assert pose_error_summary(out.rotations, particles.rotations)["median_deg"] > 0.5

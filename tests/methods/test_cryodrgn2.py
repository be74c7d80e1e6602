"""cryoDRGN2 ab initio: the pose search between epochs, wired to the model's pose buffers, recovers the
true poses when the volume is right; the recipe runs from random poses (never seeing the metadata's
poses) and writes its poses."""

import dataclasses
from pathlib import Path

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


def _online_model(particles, n, **over):
    """A homogeneous cryodrgn2 model whose render is the true blob map (the search's answer then does not
    depend on training), counting the renders."""
    cfg = get("cryodrgn2").config({**SMALL, "epochs": 2, "pretrain_epochs": 1, "search_every": 1,
                                   "search_batch": 16, "batch_size": 8, "final_search": False, **over})
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = CryoDRGN2(16, particles.pixel_size, n, cfg, "homo", blind, progress=False)
    model.set_norm(1.0)
    model.renders = 0

    def render(z=None):
        model.renders += 1
        return blob_volume(16)[None]

    model.field.render = render
    return model, cfg


def test_online_search_with_a_fixed_map_equals_the_search_of_every_image_at_once(tmp_path):
    """search_mode="online" (cryoDRGN2's): in the search epoch each image is searched once, just before
    its first step, in groups of ``search_batch`` with the map rendered again for every group (so a
    trained map would be the current one); with a map that does not change, the poses equal one search
    of all images against it ("epoch" mode), and they are in the epoch's checkpoint."""
    from cryolens.inference.engine import Trainer
    from cryolens.methods.cryodrgn import train_config

    n = 60
    particles, _ = blob_dataset(tmp_path, n, 16)
    model, cfg = _online_model(particles, n)
    start = model.pose_rotations.clone()
    trainer = Trainer(model, model.particles, train_config(cfg), tmp_path / "online", "cpu", False)
    trainer.fit()
    assert model.renders == -(-n // 16)  # one render per group of 16; epoch 0 is pre-training
    assert [(s["epoch"], s["mode"]) for s in model.searches] == [(1, "online")]
    ref, _ = _online_model(particles, n, search_mode="epoch")
    ref.search(epoch=1, device="cpu")
    assert ref.renders == 1
    err = torch.rad2deg(geodesic_distance(model.pose_rotations, ref.pose_rotations))
    assert float(err.max()) < 1e-2, err
    torch.testing.assert_close(model.pose_shifts, ref.pose_shifts)
    assert float(torch.rad2deg(geodesic_distance(start, model.pose_rotations)).median()) > 10
    saved = torch.load(tmp_path / "online" / "checkpoint.pt", weights_only=False)["model"]["pose_rotations"]
    torch.testing.assert_close(saved, model.pose_rotations)


def _online_ddp_worker(rank, world, init_file, data_dir, out_dir):
    import torch.distributed as dist

    from cryolens.inference.engine import Trainer
    from cryolens.io.star import read_star
    from cryolens.methods.cryodrgn import train_config
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        particles = read_star(Path(data_dir) / "particles.star")
        model, cfg = _online_model(particles, len(particles))
        Trainer(model, model.particles, train_config(cfg), out_dir, "cpu", False).fit()
        torch.save({"rotations": model.pose_rotations, "shifts": model.pose_shifts, "renders": model.renders},
                   Path(out_dir) / f"poses{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_online_search_under_two_process_ddp_merges_every_rank_s_images(tmp_path):
    """2 gloo processes, each searching the images of its half of every batch: after the epoch both
    ranks hold the same poses, equal to one search of all images against the map."""
    import torch.multiprocessing as mp

    from cryolens.io.star import write_star
    n = 32
    particles, _ = blob_dataset(tmp_path, n, 16)
    write_star(tmp_path / "particles.star", particles)
    mp.spawn(_online_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(tmp_path / "two")),
             nprocs=2, join=True)
    got = [torch.load(tmp_path / "two" / f"poses{r}.pt") for r in range(2)]
    assert all(g["renders"] == 1 for g in got)  # 16 images per rank: one group each
    ref, _ = _online_model(particles, n, search_mode="epoch")
    ref.search(epoch=1, device="cpu")
    for g in got:
        assert float(torch.rad2deg(geodesic_distance(g["rotations"], ref.pose_rotations)).max()) < 1e-2
        torch.testing.assert_close(g["shifts"], ref.pose_shifts)

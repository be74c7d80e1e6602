"""cryoDRGN2 ab initio: the pose search (the inference strategy PoseSearch on the engine) recovers the
true poses when the volume is right; the recipe runs from random poses (never seeing the metadata's
poses) and returns its poses, which the one writer puts in the STAR file."""

import dataclasses
from pathlib import Path

import torch

from cryolens.analysis.writer import write_run
from cryolens.imaging import geodesic_distance
from cryolens.inference.latent_model import CryoDRGN
from cryolens.inference.online_search import PoseSearch
from cryolens.inference.strategy import InferenceStrategy
from cryolens.inference.training import engine_config
from cryolens.io.runfolder import RunFolder
from cryolens.io.star import read_star
from cryolens.methods import Known, get
from cryolens.methods.cryodrgn2 import schedule
from cryolens.metrics.pose_error import pose_error_summary

from _drgn_data import blob_dataset, blob_volume

SMALL = {"dec_layers": 1, "dec_dim": 32, "batch_size": 16, "lr": 3e-3, "n_levels": 2, "max_shift": 1.0,
         "shift_step": 1.0, "norm_images": 64}


class _TrueMap:
    """A volume model whose map is the true blob volume, counting its renders."""

    def __init__(self):
        self.renders = 0

    def render(self, z=None):
        self.renders += 1
        return blob_volume(16)[None]


def test_search_with_the_true_volume_recovers_the_poses(tmp_path):
    """With the field's render replaced by the true map, one search at k_max = D/2 (grid level 4, 3.75°)
    sets ≥ 90 % of the pose buffers within 5° of the true pose (median ≤ 2.5°; the search is a heuristic
    that can lose a pose whose coarse ancestor falls out of the kept set), and those images' shifts within
    0.5 px — without an alignment: the search has the truth's frame."""
    particles, _ = blob_dataset(tmp_path, 60, 16)
    cfg = get("cryodrgn2").config(SMALL)
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    search = PoseSearch(schedule(cfg), blind, _TrueMap(), lambda dev: None, cfg.seed, "cpu", progress=False)
    assert isinstance(search, InferenceStrategy)
    search.search(epoch=100, device="cpu")
    err = torch.rad2deg(geodesic_distance(search.rotations, particles.rotations))
    good = err < 5.0
    assert float(err.median()) < 2.5 and float(good.float().mean()) >= 0.9, err
    assert float((search.shifts - particles.shifts)[good].abs().max()) <= 0.5 + 1e-6


def test_recipe_runs_ab_initio_and_writes_poses(tmp_path):
    """cryodrgn2 on 64 images for 2 epochs (search at the start of epoch 2 and after the last): the poses
    written by the one writer (particles.star) match the outputs; load_trained decodes the map returned; the
    metadata's poses never reached the model (the error to them is not ~0)."""
    particles, _ = blob_dataset(tmp_path, 64, 16)
    rec = get("cryodrgn2")
    run = RunFolder(tmp_path / "run")
    cfg = rec.config({**SMALL, "epochs": 2, "n_levels": 1})
    out = rec.fit(particles, Known(poses=False), run, cfg, "cpu", False)
    assert [s["epoch"] for s in out.metrics["pose_searches"]] == [1, 2]
    write_run(out, particles, run, recipe=rec, report=False)
    star = read_star(run.path("particles.star"))
    torch.testing.assert_close(star.rotations, out.rotations, atol=1e-4, rtol=0)
    assert len(star) == 64 and out.volume.shape == (16, 16, 16)
    from cryolens.methods.cryodrgn import load_trained  # loads a cryodrgn2 run (its poses are not model weights)
    torch.testing.assert_close(load_trained(run.root).decode(None)[0], out.volume, rtol=0, atol=1e-6)
    assert pose_error_summary(out.rotations, particles.rotations)["median_deg"] > 0.5


def _online_model(particles, n, **over):
    """A homogeneous cryodrgn2 model and its pose search, whose map is the true blob map (the search's
    answer then does not depend on training), counting the renders."""
    cfg = get("cryodrgn2").config({**SMALL, "epochs": 2, "pretrain_epochs": 1, "search_every": 1,
                                   "search_batch": 16, "batch_size": 8, "final_search": False, **over})
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = CryoDRGN(16, particles.pixel_size, n, cfg, "homo")
    model.set_norm(1.0)
    search = PoseSearch(schedule(cfg), blind, _TrueMap(), lambda dev: None, cfg.seed, "cpu", progress=False)
    return model, search, cfg


def test_online_search_with_a_fixed_map_equals_the_search_of_every_image_at_once(tmp_path):
    """search_mode="online" (cryoDRGN2's): in the search epoch each image is searched once, just before
    its first step, in groups of ``search_batch`` with the map rendered again for every group (so a
    trained map would be the current one); with a map that does not change, the poses equal one search
    of all images against it ("epoch" mode), and they are in the epoch's checkpoint."""
    from cryolens.inference.engine import Trainer

    n = 60
    particles, _ = blob_dataset(tmp_path, n, 16)
    model, search, cfg = _online_model(particles, n)
    start = search.rotations.clone()
    trainer = Trainer(model, search.particles, engine_config(cfg), tmp_path / "online", "cpu", False, [search])
    trainer.fit()
    assert search.volume.renders == -(-n // 16)  # one render per group of 16; epoch 0 is pre-training
    assert [(s["epoch"], s["mode"]) for s in search.searches] == [(1, "online")]
    _, ref, _ = _online_model(particles, n, search_mode="epoch")
    ref.search(epoch=1, device="cpu")
    assert ref.volume.renders == 1
    err = torch.rad2deg(geodesic_distance(search.rotations, ref.rotations))
    assert float(err.max()) < 1e-2, err
    torch.testing.assert_close(search.shifts, ref.shifts)
    assert float(torch.rad2deg(geodesic_distance(start, search.rotations)).median()) > 10
    saved = torch.load(tmp_path / "online" / "checkpoint.pt", weights_only=False)["strategies"][0]["rotations"]
    torch.testing.assert_close(saved, search.rotations)


def _online_ddp_worker(rank, world, init_file, data_dir, out_dir):
    import torch.distributed as dist

    from cryolens.inference.engine import Trainer
    from cryolens.io.star import read_star
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        particles = read_star(Path(data_dir) / "particles.star")
        model, search, cfg = _online_model(particles, len(particles))
        Trainer(model, search.particles, engine_config(cfg), out_dir, "cpu", False, [search]).fit()
        torch.save({"rotations": search.rotations, "shifts": search.shifts, "renders": search.volume.renders},
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
    _, ref, _ = _online_model(particles, n, search_mode="epoch")
    ref.search(epoch=1, device="cpu")
    for g in got:
        assert float(torch.rad2deg(geodesic_distance(g["rotations"], ref.rotations)).max()) < 1e-2
        torch.testing.assert_close(g["shifts"], ref.shifts)


def test_a_checkpoint_with_the_poses_in_the_model_resumes(tmp_path):
    """A cryodrgn2 checkpoint written when the poses were model buffers (pose_rotations, pose_shifts in the
    model's state) is upgraded in place: the poses become the strategy's state and a Trainer with the
    strategy resumes from it with those poses."""
    from cryolens.inference.engine import Trainer
    from cryolens.inference.online_search import upgrade_checkpoint

    n = 24
    particles, _ = blob_dataset(tmp_path, n, 16)
    model, search, cfg = _online_model(particles, n)
    Trainer(model, search.particles, engine_config(dataclasses.replace(cfg, epochs=1)), tmp_path / "run", "cpu",
            False, [search]).fit()
    path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(path, weights_only=False)
    legacy = ck.pop("strategies")[0]
    ck["model"].update(pose_rotations=legacy["rotations"], pose_shifts=legacy["shifts"])
    torch.save(ck, path)
    assert upgrade_checkpoint(path) and not upgrade_checkpoint(path)
    model2, search2, _ = _online_model(particles, n)
    search2.rotations.zero_()
    assert Trainer(model2, search2.particles, engine_config(cfg), tmp_path / "run", "cpu", False, [search2]).resume()
    torch.testing.assert_close(search2.rotations, legacy["rotations"], rtol=0, atol=0)

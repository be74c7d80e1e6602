"""cryoAI and CryoPoseNet through the registry: each runs ab initio (the metadata's poses never reach the
model) on a tiny dataset and returns the map, the poses and the pose error against the metadata, which the
one writer puts in the run folder with the report; through ``cryolens train NAME --set ...``, a run resumed
from its checkpoint ends where an uninterrupted one does; the pose refinement is reported."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cryolens.analysis.writer import write_run
from cryolens.inference.engine import read_log
from cryolens.io.mrc import read_volume
from cryolens.io.runfolder import RunFolder
from cryolens.io.star import read_star
from cryolens.methods import Known, get

from _drgn_data import blob_dataset

SMALL = {"enc_channels": 4, "enc_max_channels": 8, "enc_hidden": [32], "batch_size": 16, "norm_images": 64,
         "pose_batch": 32}
RECIPE_SMALL = {"cryoai": {**SMALL, "dec_layers": 1, "dec_dim": 32, "lr": 1e-3},
                "cryoposenet": {**SMALL, "max_shift": 2.0},
                "cryoposenet+q(V)": {**SMALL, "max_shift": 2.0, "variational_volume": True, "std_samples": 4}}


@pytest.mark.parametrize("variant", ["cryoai", "cryoposenet", "cryoposenet+q(V)"])
def test_recipe_runs_and_resumes(tmp_path, variant, monkeypatch):
    """2 epochs on 48 images (D = 16, CTF): the recipe needs only the CTF; the writer gives map.mrc (D³, the
    pixel size), particles.star whose rotations and shifts are the outputs (proper rotations), metrics with
    the rotation error against the metadata's poses and report.html. Through the CLI
    (options as --set), 1 epoch then --resume to 2 loads the checkpoint (the log holds epochs 1 and 2) and
    gives the uninterrupted run's poses. With ``variational_volume`` (CryoPoseNet with FSTdiff's q(V)) the run
    also writes std.mrc (D³, positive where q(V) has variance) and the per-shell posterior and prior std; the
    resumed run, whose steps draw q(V), ends where the uninterrupted one does."""
    particles, _ = blob_dataset(tmp_path, 48, 16)
    name = variant.split("+")[0]
    rec = get(name)
    assert rec.needs == frozenset({"ctf"}) and rec.learned
    cfg = rec.config({**RECIPE_SMALL[variant], "epochs": 2})
    run = RunFolder(tmp_path / "run")
    out = rec.fit(particles, Known(poses=False), run, cfg, "cpu", False)
    write_run(out, particles, run, recipe=rec)
    vol, px = read_volume(run.path("map.mrc"))
    assert vol.shape == (16, 16, 16) and px == pytest.approx(particles.pixel_size)
    np.testing.assert_allclose(vol, out.volume.numpy(), atol=1e-6)
    star = read_star(run.path("particles.star"))
    assert len(star) == 48
    torch.testing.assert_close(star.rotations, out.rotations, atol=1e-4, rtol=0)
    torch.testing.assert_close(star.shifts, out.shifts, atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.linalg.det(out.rotations), torch.ones(48), atol=1e-5, rtol=0)
    assert float(out.shifts.abs().max()) <= cfg.max_shift + 1e-6
    assert "median_rotation_error_amortized_deg" in out.metrics
    for f in ("report.html", "training_curves.png", "checkpoint.pt"):
        assert run.path(f).is_file(), f
    assert "median_rotation_error_amortized_deg" in run.read_json("metrics.json")
    if "q(V)" in variant:
        std, _ = read_volume(run.path("std.mrc"))
        assert std.shape == (16, 16, 16) and float(std.min()) >= 0 and float(std.mean()) > 0
        post, prior = (np.asarray(out.metrics[k]) for k in ("posterior_std_per_shell", "prior_std_per_shell"))
        assert post.shape == prior.shape == (9,) and (post < prior).all()
        assert "final_kl_volume" in out.metrics

    # the CLI with --set overrides: 1 epoch, then --resume to 2 continues from the checkpoint
    from cryolens.cli.main import main
    from cryolens.inference.engine import Trainer
    from cryolens.io.star import write_star

    resumed = []
    original = Trainer.resume
    monkeypatch.setattr(Trainer, "resume", lambda self: resumed.append(original(self)) or resumed[-1])
    write_star(tmp_path / "particles.star", particles)
    sets = [a for k, v in RECIPE_SMALL[variant].items() for a in ("--set", f"{k}={json.dumps(v)}")]
    args = ["train", name, str(tmp_path / "particles.star"), "--out", str(tmp_path / "cli"), "--quiet",
            "--device", "cpu", *sets]
    assert main([*args, "--epochs", "1"]) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert resumed == [True]
    ends = [r["epoch"] for r in read_log(tmp_path / "cli" / "log.jsonl") if r.get("epoch_end")]
    assert ends == [1, 2]
    cli_star = read_star(tmp_path / "cli" / "particles.star")
    np.testing.assert_allclose(cli_star.rotations.numpy(), out.rotations.numpy(), atol=1e-3)
    assert (tmp_path / "cli" / "report.html").is_file()


def test_pose_refinement_reports_both_errors(tmp_path):
    """refine_poses=true: the poses returned are the hierarchical search's against the trained map (grid
    points of level base + levels), metrics hold the amortized and the refined rotation errors, and the
    maps refined/ (map, half1, half2, written by the writer) are the back-projection of the images with the
    refined poses."""
    from cryolens.imaging import so3_grid
    from cryolens.imaging.rotations import geodesic_distance

    particles, _ = blob_dataset(tmp_path, 24, 16)
    rec = get("cryoai")
    cfg = rec.config({**RECIPE_SMALL["cryoai"], "epochs": 1, "refine_poses": True, "refine_base_level": 1,
                      "refine_levels": 1, "refine_keep": 2})
    out = rec.fit(particles, Known(poses=False), RunFolder(tmp_path / "run"), cfg, "cpu", False)
    write_run(out, particles, RunFolder(tmp_path / "run"), recipe=rec, report=False)
    assert {"median_rotation_error_amortized_deg", "median_rotation_error_refined_deg"} <= set(out.metrics)
    grid = so3_grid(2)
    nearest = geodesic_distance(out.rotations[:, None], grid[None]).min(dim=1).values
    assert float(nearest.max()) < 1e-3
    # the images back-projected with the refined poses (not the amortized ones): refined/
    from cryolens.methods.backprojection import backproject

    vol, _ = read_volume(tmp_path / "run" / "refined" / "map.mrc")
    bp = backproject(dataclasses.replace(particles, rotations=out.rotations, shifts=out.shifts), progress=False)
    np.testing.assert_allclose(vol, bp.volume.numpy(), atol=1e-5 * float(bp.volume.abs().max()))
    from cryolens.imaging import euler_to_matrix
    extra = read_star(tmp_path / "run" / "particles.star").extra
    amortized = euler_to_matrix(*(torch.deg2rad(torch.as_tensor(np.array(extra[f"rlnCryolensAmortized{k}"], float)))
                                  for k in ("AngleRot", "AngleTilt", "AnglePsi")))
    assert not torch.allclose(amortized.float(), out.rotations, atol=1e-3)
    assert out.metrics["resolution_halfmap_0143_refined_A"] == pytest.approx(bp.resolution)
    for f in ("half1.mrc", "half2.mrc"):
        assert (tmp_path / "run" / "refined" / f).is_file(), f


def test_gold_standard_rounds_search_each_half_against_its_own_weighted_half_map(tmp_path, monkeypatch):
    """refine_rounds=2: round 1 searches every image against the trained map; round 2 searches the images of
    half-set h only (the back-projection's split) against the half map h of the images back-projected with
    round 1's poses, recomputed here: weighted per shell by sqrt(2 FSC / (1 + FSC)) of the halves' FSC and
    solvent-flattened outside 0.4 D, one level finer. The poses written lie on that finer grid; both rounds'
    errors are in the metrics."""
    import cryolens.inference.pose_refine as ap
    from cryolens.imaging import flatten_solvent, shell_filter_volume, so3_grid
    from cryolens.imaging.rotations import geodesic_distance
    from cryolens.inference.reconstruct import fsc_reference_weight
    from cryolens.io.particles import half_set_labels
    from cryolens.methods.backprojection import backproject

    calls, original = [], ap.refine_poses

    def spy(volume, parts, config, device, indices=None, n_levels=None):
        out = original(volume, parts, config, device, indices, n_levels)
        calls.append({"reference": volume.clone(), "indices": indices, "levels": n_levels, "poses": out})
        return out

    monkeypatch.setattr(ap, "refine_poses", spy)
    particles, _ = blob_dataset(tmp_path, 24, 16)
    rec = get("cryoai")
    cfg = rec.config({**RECIPE_SMALL["cryoai"], "epochs": 1, "refine_poses": True, "refine_base_level": 1,
                      "refine_levels": 1, "refine_keep": 2, "refine_rounds": 2})
    out = rec.fit(particles, Known(poses=False), RunFolder(tmp_path / "run"), cfg, "cpu", False)
    assert len(calls) == 3 and calls[0]["indices"] is None and calls[0]["levels"] is None
    r1, s1 = calls[0]["poses"]
    bp = backproject(dataclasses.replace(particles, rotations=r1, shifts=s1), seed=cfg.seed, progress=False)
    labels = half_set_labels(particles, cfg.seed)
    w = fsc_reference_weight(bp.fsc)
    for h, half in enumerate((bp.half1, bp.half2)):
        call = calls[1 + h]
        np.testing.assert_array_equal(call["indices"], np.nonzero(labels == h)[0])
        assert call["levels"] == 2
        expected = flatten_solvent(shell_filter_volume(half, w), 0.4 * 16)
        torch.testing.assert_close(call["reference"], expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
        torch.testing.assert_close(out.rotations[torch.as_tensor(call["indices"])], call["poses"][0])
    nearest = geodesic_distance(out.rotations[:, None], so3_grid(3)[None]).min(dim=1).values
    assert float(nearest.max()) < 1e-3
    assert {"median_rotation_error_refined_round1_deg", "median_rotation_error_refined_deg",
            "resolution_halfmap_0143_refined_round1_A"} <= set(out.metrics)


def test_fsc_reference_weight_closed_form():
    """sqrt(2F / (1 + F)): 1 at F = 1, 0 at F ≤ 0, ½ at F = 1/7, 1/√2 at F = 1/3."""
    from cryolens.inference.reconstruct import fsc_reference_weight

    np.testing.assert_allclose(fsc_reference_weight(np.array([1.0, 0.0, -0.3, 1 / 7, 1 / 3])),
                               [1.0, 0.0, 0.0, 0.5, 2 ** -0.5], rtol=0, atol=1e-12)


@pytest.mark.parametrize("symmetrized", [False, True])
def test_pose_heads_take_the_best_hypothesis_and_train_only_the_winner(tmp_path, symmetrized):
    """pose_heads = 3: each image's error is the smallest of the errors of its three hypotheses, each
    computed here separately through ``image_errors`` (with the symmetrized loss: the smallest over both
    branches × three heads), its pose is that hypothesis, and after a backward pass the rotation head's
    output rows of a hypothesis that won no image have zero gradient while the winners' do not."""
    from cryolens.imaging import flip_centered, inplane_pi_pose
    from cryolens.methods.cryoai import CryoAI

    particles, _ = blob_dataset(tmp_path, 12, 16)
    from cryolens.io.dataset import iterate_batches

    images = next(iterate_batches(particles, 12))[1]
    cfg = get("cryoai").config({**RECIPE_SMALL["cryoai"], "pose_heads": 3, "symmetrized_loss": symmetrized})
    torch.manual_seed(0)
    model = CryoAI(16, particles.pixel_size, cfg)
    model.set_norm(float(images.std()))
    model.eval()  # batch norm on running statistics: the encoder gives the same hypotheses on every call
    e, pi, rot, _ = model.branches(images, particles.ctf)

    with torch.no_grad():
        copies = [(images, False)] + ([(flip_centered(images), True)] if symmetrized else [])
        per = []  # (errors (12,), rotations (12, 3, 3)) of each branch × head, poses in the image's frame
        for x, flipped in copies:
            hyp, sh = model.encoder.hypotheses(x)
            for h in range(3):
                r = hyp[:, h]
                per.append((model.image_errors(x, r, sh, particles.ctf),
                            inplane_pi_pose(r, sh)[0] if flipped else r))
        table = torch.stack([p[0] for p in per])  # (branches × 3, 12)
        torch.testing.assert_close(e.detach(), table.min(0).values, rtol=1e-5, atol=1e-7)
        win = table.argmin(0)
        want = torch.stack([per[int(w)][1][i] for i, w in enumerate(win)])
        torch.testing.assert_close(rot.detach(), want, rtol=0, atol=1e-5)
        assert bool((pi == (win >= 3)).all())

    model.zero_grad()
    e.mean().backward()
    grad = model.encoder.rotation_head[-1].weight.grad.reshape(3, 6, -1).abs().sum((1, 2))
    heads_won = set((win % 3).tolist())
    for h in range(3):
        assert (float(grad[h]) > 0) == (h in heads_won), (h, heads_won, grad)


def test_loss_resolution_limits_the_error_and_the_map_to_the_band(tmp_path):
    """loss_resolution = 4 shells' resolution on D = 16: a plane wave at 6 cycles per box added to the
    images leaves every image's error unchanged (it does change it with the full band), one at 2 cycles
    changes it; the map written has no power at or beyond the band's radius (its low-pass edge is inside)."""
    from cryolens.imaging import fft3_centered
    from cryolens.imaging.grids import freq_grid_3d
    from cryolens.io.dataset import iterate_batches
    from cryolens.methods.cryoai import CryoAI
    from cryolens.volumes.lattice import SliceLattice

    particles, _ = blob_dataset(tmp_path, 8, 16)
    images = next(iterate_batches(particles, 8))[1]
    x = torch.arange(16, dtype=torch.float32)
    wave = {k: torch.cos(2 * torch.pi * k * x / 16)[None, None, :].expand(8, 16, 16) for k in (2, 6)}
    res = 16 * particles.pixel_size / 4
    errors = {}
    for band in (res, 0.0):
        torch.manual_seed(0)
        cfg = get("cryoai").config({**RECIPE_SMALL["cryoai"], "loss_resolution": band})
        model = CryoAI(16, particles.pixel_size, cfg)
        model.set_norm(float(images.std()))
        model.eval()
        rots, sh = model.encoder.hypotheses(images)
        with torch.no_grad():
            errors[band] = [model.image_errors(images + a * w, rots[:, 0], sh, particles.ctf)
                            for w, a in ((wave[2], 0.0), (wave[6], 3.0), (wave[2], 3.0))]
        if band:
            assert len(model.lattice) < len(SliceLattice(16))
            power = fft3_centered(model.render_map()).abs()
            r = freq_grid_3d(16).norm(dim=-1) * 16
            assert float(power[r > 3.999].max()) < 1e-6 * float(power.max())  # the edge ends at the band
    plain, high, low = errors[res]
    torch.testing.assert_close(high, plain, rtol=1e-6, atol=0)
    assert float((low - plain).abs().min()) > 1e-3 * float(plain.min())
    assert float((errors[0.0][1] - errors[0.0][0]).abs().min()) > 1e-3 * float(errors[0.0][0].min())


def test_loss_band_marches_on_schedule_and_resumes(tmp_path, monkeypatch):
    """loss_resolution 4 px → loss_resolution_final 7 px from epoch 1 on, 4 epochs (D = 16): the band is
    4, 4, 5.5, 7 px (linear in frequency), each epoch's image error is taken on exactly that lattice, the
    map written has no power at or beyond 7 px; a run stopped after 2 epochs and resumed writes the
    uninterrupted run's map, and so does a finished run resumed (its band, 7 px, comes from the checkpoint)."""
    from cryolens.imaging import fft3_centered
    from cryolens.imaging.grids import freq_grid_3d
    from cryolens.methods.cryoai import CryoAI, band_radius
    from cryolens.volumes.lattice import SliceLattice

    particles, _ = blob_dataset(tmp_path, 48, 16)
    apix = particles.pixel_size
    march = {"loss_resolution": 16 * apix / 4, "loss_resolution_final": 16 * apix / 7, "march_start": 1, "epochs": 4}
    cfg = get("cryoai").config({**RECIPE_SMALL["cryoai"], **march})
    assert [band_radius(cfg, 16, apix, e) for e in range(4)] == pytest.approx([4, 4, 5.5, 7])
    assert band_radius(dataclasses.replace(cfg, loss_resolution_final=0.0), 16, apix, 3) == pytest.approx(4)
    assert band_radius(dataclasses.replace(cfg, loss_resolution=0.0, loss_resolution_final=0.0), 16, apix, 0) == 8

    seen = {}
    errors = CryoAI.image_errors

    def spy(self, *args):
        out = errors(self, *args)
        seen.setdefault(round(float(self.band), 6), set()).add(len(self.lattice))
        return out

    monkeypatch.setattr(CryoAI, "image_errors", spy)
    out = get("cryoai").fit(particles, Known(poses=False), RunFolder(tmp_path / "full"), cfg, "cpu", False)
    assert sorted(seen) == [4.0, 5.5, 7.0]
    for band, sizes in seen.items():
        assert sizes == {len(SliceLattice(16, radius=band))}, (band, sizes)
    power = fft3_centered(out.volume).abs()
    r = freq_grid_3d(16).norm(dim=-1) * 16
    assert float(power[r > 6.999].max()) < 1e-6 * float(power.max())
    assert float(power[r < 4].max()) > 0

    class Stop(Exception):
        pass

    hook = CryoAI.on_epoch_start

    def stop_at_2(self, epoch, trainer):
        if epoch == 2:
            raise Stop
        hook(self, epoch, trainer)

    monkeypatch.setattr(CryoAI, "on_epoch_start", stop_at_2)
    with pytest.raises(Stop):
        get("cryoai").fit(particles, Known(poses=False), RunFolder(tmp_path / "cut"), cfg, "cpu", False)
    monkeypatch.setattr(CryoAI, "on_epoch_start", hook)
    again = get("cryoai").fit(particles, Known(poses=False), RunFolder(tmp_path / "cut"),
                              dataclasses.replace(cfg, resume=True), "cpu", False)
    assert [r["epoch"] for r in read_log(tmp_path / "cut" / "log.jsonl") if r.get("epoch_end")] == [1, 2, 3, 4]
    torch.testing.assert_close(again.volume, out.volume, atol=1e-4 * float(out.volume.abs().max()), rtol=0)
    done = get("cryoai").fit(particles, Known(poses=False), RunFolder(tmp_path / "full"),
                             dataclasses.replace(cfg, resume=True), "cpu", False)
    torch.testing.assert_close(done.volume, out.volume, atol=1e-6 * float(out.volume.abs().max()), rtol=0)


def test_encoder_lowpass_is_read_in_angstrom(tmp_path):
    """enc_lowpass is a resolution in Å: at 4 shells' resolution on D = 16 the encoder's input filter
    passes a plane wave at 2 cycles per box and removes one at 6 (the value used to reach the encoder as
    cycles/px, where 4 shells' resolution in Å meant no filter at all)."""
    from cryolens.imaging.grids import freq_grid_2d
    from cryolens.methods.cryoai import CryoAI

    particles, _ = blob_dataset(tmp_path, 4, 16)
    cfg = get("cryoai").config({**RECIPE_SMALL["cryoai"], "enc_lowpass": 16 * particles.pixel_size / 4})
    filt = CryoAI(16, particles.pixel_size, cfg).encoder.filter
    k = freq_grid_2d(16).norm(dim=-1) * 16  # cycles per box
    assert float(filt[(k - 2).abs() < 0.5].min()) > 0.99
    assert float(filt[(k - 6).abs() < 0.5].max()) < 1e-6

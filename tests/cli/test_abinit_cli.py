"""`cryolens abinit` end to end, in-process: the run folder and STAR file (homogeneous and two-class),
resume after a kill, a warm start, and bad input."""

import json
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "inference"))
from _inference_data import blob_volume  # noqa: E402

from cryolens.cli.main import main  # noqa: E402
from cryolens.inference import abinit as abinit_mod  # noqa: E402
from cryolens.io.mrc import read_volume, write_volume  # noqa: E402
from cryolens.io.star import read_star  # noqa: E402
from cryolens.simulate.dataset import simulate_dataset  # noqa: E402

D = 16
ARGS = ["--iterations", "12", "--batch-size", "40", "--final-batch-size", "60", "--grid-level", "1",
        "--max-shift", "1", "--final-resolution", "8", "--no-refine", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """150 images (D = 16, 3 Å/px, SNR 3, CTF, shifts ≤ 1 px) of two blob maps, 50/50."""
    root = tmp_path_factory.mktemp("abi")
    vols = torch.stack([blob_volume(D, seed=0), blob_volume(D, n_blobs=6, seed=5)])
    out = simulate_dataset(root / "data", vols, 150, 3.0, 3.0, shift_std=0.5, shift_max=1.0, seed=3, progress=False)
    return out / "particles.star", vols


def test_abinit_writes_maps_and_star(data, tmp_path):
    """Homogeneous (--classes 1) and two-class runs write the ab initio maps (voxel size kept), per-iteration
    plots, metrics with one history entry per iteration, a report, and a particles.star that our reader
    reads back with poses for every particle — with rlnClassNumber in 1..2 for two classes."""
    star, _ = data
    for k in (1, 2):
        out = tmp_path / f"run{k}"
        assert main(["abinit", str(star), "--out", str(out), "--classes", str(k), "--seed", "1", *ARGS]) == 0
        for name in ["abinit_class_001.mrc", "particles.star", "metrics.json", "abinit_resolution.png",
                     "abinit_posterior.png", "abinit_checkpoint.pt", "report.html"]:
            assert (out / name).is_file(), name
        vol, px = read_volume(out / "abinit_class_001.mrc")
        assert vol.shape == (D, D, D) and px == pytest.approx(3.0)
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(metrics["abinit_history"]) == 12 and metrics["n_classes"] == k
        back = read_star(out / "particles.star")
        assert len(back) == 150 and back.rotations is not None
        if k == 2:
            assert (out / "abinit_class_002.mrc").is_file()
            assert set(np.unique(np.asarray(back.extra["rlnClassNumber"]).astype(int))) <= {1, 2}
        else:
            assert "rlnClassNumber" not in back.extra


def test_abinit_resume_after_kill_equals_uninterrupted(data, tmp_path, monkeypatch):
    """Killed at iteration 11 (last checkpoint at 10) and resumed, the ab initio map and poses equal an
    uninterrupted run's (the mini-batch generator's state is checkpointed)."""
    star, _ = data
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["abinit", str(star), "--out", str(full), *ARGS]) == 0
    real = abinit_mod.AbInitio.step

    def dying(self):
        if self.state.iteration == 11:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(abinit_mod.AbInitio, "step", dying)
    assert main(["abinit", str(star), "--out", str(killed), *ARGS]) == 130
    monkeypatch.setattr(abinit_mod.AbInitio, "step", real)
    assert main(["abinit", str(star), "--out", str(killed), *ARGS, "--resume"]) == 0
    a, _ = read_volume(full / "abinit_class_001.mrc")
    b, _ = read_volume(killed / "abinit_class_001.mrc")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    torch.testing.assert_close(read_star(killed / "particles.star").rotations,
                               read_star(full / "particles.star").rotations, atol=1e-5, rtol=0)


def test_abinit_warm_start_and_bad_input(data, tmp_path, capsys):
    """--init-map (the true class-0 map) starts in the truth's frame: the result's FSC at shell 2 with
    the mean of the two true maps (what one map of this 50/50 mixture tends to), without any
    alignment, is ≥ 0.6 and beats a random start's (whose frame is arbitrary) by ≥ 0.2; a map of the
    wrong box is refused with exit code 2 naming the file."""
    from cryolens.metrics.fsc import fsc

    star, vols = data
    good = tmp_path / "good.mrc"
    write_volume(good, vols[0].numpy(), 3.0)
    scores = {}
    for name, extra in (("warm", ["--init-map", str(good)]), ("random", [])):
        out = tmp_path / name
        assert main(["abinit", str(star), "--out", str(out), *extra, *ARGS]) == 0
        est, _ = read_volume(out / "abinit_class_001.mrc")
        scores[name] = float(fsc(torch.from_numpy(est), vols.mean(0))[2])
    assert scores["warm"] >= 0.6 and scores["warm"] >= scores["random"] + 0.2, scores
    bad = tmp_path / "bad.mrc"
    write_volume(bad, np.zeros((8, 8, 8), np.float32), 3.0)
    assert main(["abinit", str(star), "--out", str(tmp_path / "b"), "--init-map", str(bad), *ARGS]) == 2
    assert "bad.mrc" in capsys.readouterr().err


def test_abinit_hands_over_to_refinement(data, tmp_path, monkeypatch):
    """Without --no-refine, one-class ab initio hands its map to auto_refine (em-refine): the run folder
    gains the refined map, half maps, the FSC plot and the refinement's own folder; metrics carry the
    half-map resolution; particles.star holds the refinement's poses (read back, one per particle).
    The start handed over is the ab initio map written, centred on its centre of mass, and
    --handover-lowpass reaches the refinement's initial low-pass, --relax-sym its relax_symmetry."""
    from cryolens.imaging import center_volume
    from cryolens.inference import autorefine

    seen = {}
    real = autorefine.auto_refine

    def spy(particles, start, config, **kw):
        seen.update(start=start.clone(), lowpass=config.initial_lowpass, relax=config.relax_symmetry)
        return real(particles, start, config=config, **kw)

    monkeypatch.setattr(autorefine, "auto_refine", spy)
    star, _ = data
    out = tmp_path / "ref"
    args = [a for a in ARGS if a != "--no-refine"]
    assert main(["abinit", str(star), "--out", str(out), *args, "--refine-max-iterations", "1",
                 "--handover-lowpass", "12", "--relax-sym", "C2"]) == 0
    assert seen["lowpass"] == 12.0 and seen["relax"] == "C2"
    abinit_map = torch.from_numpy(np.ascontiguousarray(read_volume(out / "abinit_class_001.mrc")[0])).float()
    torch.testing.assert_close(seen["start"], center_volume(abinit_map)[0], rtol=0, atol=1e-5)
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "fsc.png", "refine/checkpoint.pt", "abinit_class_001.mrc"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refine_iterations"] == 1 and metrics["resolution_halfmap_0143_A"] > 0
    assert len(metrics["relax_symmetry_axis_xyz"]) == 3
    back = read_star(out / "particles.star")
    assert len(back) == 150 and back.rotations is not None

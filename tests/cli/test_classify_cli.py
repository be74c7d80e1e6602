"""`cryolens classify` end to end, in-process: the run folder, a STAR file of classes and poses that
our reader (and so RELION's format) reads back, resume after a kill, and bad input."""

import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "inference"))
from _inference_data import blob_volume  # noqa: E402

import cryolens.inference.classes as classes_mod  # noqa: E402
from cryolens.cli.main import main  # noqa: E402
from cryolens.io.mrc import read_volume, write_volume  # noqa: E402
from cryolens.io.star import read_star  # noqa: E402
from cryolens.simulate.dataset import read_ground_truth, simulate_dataset  # noqa: E402

D = 16
ARGS = ["--healpix-order", "1", "--offset-range", "1", "--iterations", "3", "--batch-size", "100", "--quiet"]


@pytest.fixture(scope="module")
def two_class_data(tmp_path_factory):
    """200 images (D = 16, 3 Å/px, SNR 3, CTF, shifts ≤ 1 px) of two different blob maps, 50/50; the
    start map is their average (one start for both classes, as RELION is given)."""
    root = tmp_path_factory.mktemp("cls")
    vols = torch.stack([blob_volume(D, seed=0), blob_volume(D, n_blobs=6, seed=5)])
    out = simulate_dataset(root / "data", vols, 200, 3.0, 3.0, shift_std=0.5, shift_max=1.0, seed=2, progress=False)
    start = root / "start.mrc"
    write_volume(start, vols.mean(0).numpy(), 3.0)
    return out / "particles.star", start, read_ground_truth(out)


def _kill_at(monkeypatch, name: str, call: int):
    """Make ``classes_mod.<name>`` raise KeyboardInterrupt at its ``call``-th call; returns the real function."""
    real = getattr(classes_mod, name)
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(classes_mod, name, dying)
    return real


def _same_classes(full, killed):
    """The class maps (to float32 rounding) and the classes of two run folders agree."""
    for k in (1, 2):
        a, _ = read_volume(full / f"class_{k:03d}.mrc")
        b, _ = read_volume(killed / f"class_{k:03d}.mrc")
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    sa, sb = read_star(full / "particles.star"), read_star(killed / "particles.star")
    assert np.array_equal(sa.extra["rlnClassNumber"], sb.extra["rlnClassNumber"])
    return sa, sb


def test_classify_writes_classes_and_a_readable_star(two_class_data, tmp_path):
    """The run folder holds K maps with the voxel size, plots, metrics and a report; particles.star
    read back with our STAR reader has every particle, rlnClassNumber in 1..K (1-based, RELION's
    convention) agreeing with the classes in metrics.json, and poses; the populations sum to 1."""
    star, start, gt = two_class_data
    out = tmp_path / "run"
    assert main(["classify", str(star), "--classes", "2", "--out", str(out), "--init-map", str(start), *ARGS]) == 0
    for name in ("class_001.mrc", "class_002.mrc", "particles.star", "metrics.json", "config.json",
                 "class_populations.png", "resolution.png", "class_sections.png", "checkpoint.pt", "report.html"):
        assert (out / name).is_file(), name
    vol, px = read_volume(out / "class_001.mrc")
    assert vol.shape == (D, D, D) and px == pytest.approx(3.0)
    back = read_star(out / "particles.star")
    assert len(back) == 200 and back.rotations is not None and back.shifts is not None
    cls = np.asarray(back.extra["rlnClassNumber"]).astype(int)
    assert set(np.unique(cls)) <= {1, 2}
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.bincount(cls - 1, minlength=2).tolist() == metrics["class_counts"]
    assert sum(metrics["class_prior"]) == pytest.approx(1.0)
    assert len(metrics["history"]) == 3
    assert "class_populations.png" in (out / "report.html").read_text()


def test_classify_resume_after_kill_equals_uninterrupted(two_class_data, tmp_path, monkeypatch):
    """A run killed in its third iteration (after two checkpoints) and resumed with --resume ends with
    the same class maps (to float32 rounding), classes and poses as a run never interrupted."""
    star, start, _ = two_class_data
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["classify", str(star), "--classes", "2", "--out", str(full), "--init-map", str(start), *ARGS]) == 0
    real = _kill_at(monkeypatch, "class_em_iteration", 3)
    assert main(["classify", str(star), "--classes", "2", "--out", str(killed), "--init-map", str(start), *ARGS]) == 130
    assert not (killed / "class_001.mrc").exists()
    monkeypatch.setattr(classes_mod, "class_em_iteration", real)
    assert main(["classify", str(star), "--classes", "2", "--out", str(killed), "--init-map", str(start), *ARGS,
                 "--resume"]) == 0
    sa, sb = _same_classes(full, killed)
    torch.testing.assert_close(sb.rotations, sa.rotations, atol=1e-5, rtol=0)


def test_classify_bad_input(tmp_path, capsys):
    """A missing STAR file and a class count of 0 end with exit code 2 and one line naming the problem."""
    assert main(["classify", str(tmp_path / "none.star"), "--classes", "2", "--out", str(tmp_path / "r")]) == 2
    assert "none.star" in capsys.readouterr().err
    (tmp_path / "x.star").write_text("data_\n")
    assert main(["classify", str(tmp_path / "x.star"), "--classes", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--classes 0" in capsys.readouterr().err


def test_classify_skip_align_keeps_the_input_poses(two_class_data, tmp_path, capsys):
    """--skip-align (RELION's --skip_align) on the simulated STAR, whose poses are the true ones: the
    classes are recovered (≥ 95 %, best label matching against the ground truth) and particles.star
    carries the input's poses unchanged. A STAR without poses is refused with exit code 2 and one line."""
    star, start, gt = two_class_data
    out = tmp_path / "run"
    assert main(["classify", str(star), "--classes", "2", "--out", str(out), "--init-map", str(start),
                 "--skip-align", "--iterations", "4", "--quiet"]) == 0
    back, given = read_star(out / "particles.star"), read_star(star)
    torch.testing.assert_close(back.rotations, given.rotations, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.shifts, given.shifts, atol=1e-5, rtol=0)
    cls = np.asarray(back.extra["rlnClassNumber"]).astype(int) - 1
    truth = np.asarray(gt["labels"]).astype(int)
    assert max(np.mean(cls == truth), np.mean(cls != truth)) >= 0.95
    capsys.readouterr()
    text = star.read_text()
    for name in ("_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi"):
        text = text.replace(name + " ", "_rlnUnused" + name[4:] + " ")
    bare = star.parent / "noposes.star"  # next to the stack it names
    bare.write_text(text)
    code = main(["classify", str(bare), "--classes", "2", "--out", str(tmp_path / "r2"),
                 "--init-map", str(start), "--skip-align", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no poses" in err and "Traceback" not in err


def test_skip_align_resume_after_the_folds_are_dropped_equals_uninterrupted(two_class_data, tmp_path, monkeypatch):
    """--skip-align with its default leave-fold-out references, killed in its eighth iteration (after the classes had
    settled and the folds were dropped, as the uninterrupted run's history shows: 4 … then 0) and resumed: the same
    class maps, classes and per-iteration use of the folds as the uninterrupted run (the checkpoint keeps
    ``folds_settled``)."""
    import json

    star, start, _ = two_class_data
    args = ["--classes", "2", "--init-map", str(start), "--skip-align", "--iterations", "9", "--batch-size", "100",
            "--quiet"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["classify", str(star), "--out", str(full), *args]) == 0
    used = [h["reference_folds"] for h in json.loads((full / "metrics.json").read_text())["history"]]
    assert used[0] == 4 and 0 < used.index(0) < 7 and used[-1] == 0, used
    real = _kill_at(monkeypatch, "class_em_iteration_fixed_poses", 8)
    assert main(["classify", str(star), "--out", str(killed), *args]) == 130
    monkeypatch.setattr(classes_mod, "class_em_iteration_fixed_poses", real)
    assert main(["classify", str(star), "--out", str(killed), *args, "--resume"]) == 0
    again = [h["reference_folds"] for h in json.loads((killed / "metrics.json").read_text())["history"]]
    assert again == used
    _same_classes(full, killed)

"""cryolens train / eval-vol / analyze in-process on a tiny dataset: the run folder's files, resume,
decoding at given z, and one-line errors with exit code 2 for bad input."""

import sys
from pathlib import Path

import numpy as np

from cryolens.cli.main import main
from cryolens.io.mrc import read_volume
from cryolens.io.star import write_star

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from _drgn_data import blob_dataset  # noqa: E402

TINY = ["--set", "enc_layers=1", "--set", "enc_dim=32", "--set", "dec_layers=1", "--set", "dec_dim=32",
        "--set", "norm_images=50", "--lr", "1e-3", "--quiet", "--device", "cpu"]


def test_train_resume_eval_vol_and_analyze(tmp_path, capsys):
    """train cryodrgn for 1 epoch, resume to 2 (the log then holds two epochs), eval-vol at explicit z
    and at particles' z (maps with the dataset's pixel size), analyze writes its folder."""
    particles, _ = blob_dataset(tmp_path, 48, 16, hetero=True)
    star = tmp_path / "particles.star"
    write_star(star, particles)
    run = tmp_path / "run"
    assert main(["train", "cryodrgn", str(star), "--out", str(run), "--epochs", "1", "--zdim", "2",
                 "--batch-size", "8", *TINY]) == 0
    for name in ("config.json", "model.json", "checkpoint.pt", "log.jsonl", "z.npy", "map.mrc",
                 "training_curves.png", "metrics.json", "report.html"):
        assert (run / name).is_file(), name
    assert np.load(run / "z.npy").shape == (48, 2)
    assert main(["train", "cryodrgn", str(star), "--out", str(run), "--epochs", "2", "--zdim", "2",
                 "--batch-size", "8", "--resume", *TINY]) == 0
    import json
    ends = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "epoch_end" in x]
    assert [e["epoch"] for e in ends] == [1, 2]
    out = tmp_path / "maps"
    assert main(["eval-vol", str(run), "--z", "0.5,-0.5", "--z", "0,0", "--out", str(out), "--device", "cpu"]) == 0
    v, px = read_volume(out / "vol_001.mrc")
    assert v.shape == (16, 16, 16) and px == particles.pixel_size
    assert main(["eval-vol", str(run), "--z-index", "0", "5", "--out", str(tmp_path / "m2")]) == 0
    assert (tmp_path / "m2" / "vol_001.mrc").is_file()
    assert main(["analyze", str(run), "--clusters", "3", "--no-umap", "--device", "cpu"]) == 0
    assert (run / "analysis").is_dir()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """Unknown recipe, unknown option, wrong z dimension, a folder that is no run: exit 2, one line."""
    particles, _ = blob_dataset(tmp_path, 16, 16, hetero=True)
    star = tmp_path / "particles.star"
    write_star(star, particles)
    assert main(["train", "nosuch", str(star), "--out", str(tmp_path / "r")]) == 2
    assert main(["train", "cryodrgn", str(star), "--out", str(tmp_path / "r"), "--set", "wings=3"]) == 2
    assert "no option 'wings'" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "cryodrgn", str(star), "--out", str(run), "--epochs", "1", "--zdim", "2", *TINY]) == 0
    capsys.readouterr()
    assert main(["eval-vol", str(run), "--z", "1,2,3", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "zdim 2" in err and len(err.strip().splitlines()) == 1
    assert main(["eval-vol", str(tmp_path), "--out", str(tmp_path / "m")]) == 2

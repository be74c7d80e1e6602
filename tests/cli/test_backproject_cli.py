"""`cryolens backproject` and `cryolens fsc` end to end, in-process, and on bad input."""

import hashlib
import json
import pathlib
import sys

import mrcfile
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "methods"))
from test_backprojection import _dataset  # noqa: E402

from cryolens.cli.main import main  # noqa: E402
from cryolens.io.mrc import write_volume  # noqa: E402
from cryolens.io.star import write_star  # noqa: E402


def _sha(p):
    return hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()


@pytest.fixture
def star_dataset(tmp_path):
    particles, vol = _dataset(tmp_path, 400, noise_sigma=1.0)
    star = tmp_path / "particles.star"
    write_star(star, particles)
    truth = tmp_path / "truth.mrc"
    write_volume(truth, vol.numpy(), particles.pixel_size)
    return star, truth


def test_backproject_writes_the_run_folder(star_dataset, tmp_path, capsys):
    """The run folder holds maps, metrics (half-map and ground-truth resolution), plots and a
    self-contained report with the plots embedded."""
    star, truth = star_dataset
    out = tmp_path / "run"
    assert main(["backproject", str(star), "--out", str(out), "--reference", str(truth), "--quiet"]) == 0
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "metrics.json", "config.json", "fsc.png",
                 "sections.png", "particles.png", "report.html"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 400 and m["n_half1"] + m["n_half2"] == 400
    assert 4.0 <= m["resolution_halfmap_0143_A"] < 64
    assert 4.0 <= m["resolution_vs_ground_truth_05_A"] < 64
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "resolution" in capsys.readouterr().out


def test_no_report_writes_the_maps_and_numbers_only(star_dataset, tmp_path):
    """--no-report: the same maps and metrics as with the report, and no PNG or HTML."""
    star, truth = star_dataset
    fast, full = tmp_path / "fast", tmp_path / "full"
    common = ["backproject", str(star), "--reference", str(truth), "--quiet"]
    assert main([*common, "--out", str(fast), "--no-report"]) == 0
    assert main([*common, "--out", str(full)]) == 0
    assert not list(fast.glob("*.png")) and not (fast / "report.html").exists()
    for name in ("map.mrc", "half1.mrc", "half2.mrc"):
        np.testing.assert_array_equal(mrcfile.read(fast / name), mrcfile.read(full / name), err_msg=name)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (fast, full))
    assert a["resolution_vs_ground_truth_05_A"] == b["resolution_vs_ground_truth_05_A"]


def test_fsc_command_matches_library(star_dataset, tmp_path, capsys):
    """`cryolens fsc` prints the same resolution as the library on the same maps."""
    star, truth = star_dataset
    out = tmp_path / "run"
    main(["backproject", str(star), "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert main(["fsc", str(out / "half1.mrc"), str(out / "half2.mrc"), "--out", str(tmp_path / "f")]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert f"{m['resolution_halfmap_0143_A']:.2f} Å" in printed.splitlines()[0]
    assert (tmp_path / "f" / "fsc.png").is_file()


@pytest.mark.parametrize("case", ["missing", "no_poses", "reference_box", "odd_box_reference"])
def test_backproject_bad_input_one_line_exit_2(case, star_dataset, tmp_path, capsys):
    """Bad input: exit code 2, one stderr line naming the file, no traceback, inputs unchanged."""
    star, truth = star_dataset
    args = ["backproject", str(star), "--out", str(tmp_path / "run"), "--quiet"]
    named = str(star)
    if case == "missing":
        args[1] = named = str(tmp_path / "nope.star")
    elif case == "no_poses":
        import starfile

        blocks = starfile.read(star, always_dict=True)
        blocks["particles"] = blocks["particles"].drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
        bad = tmp_path / "noposes.star"
        starfile.write(blocks, bad)
        args[1] = named = str(bad)
    elif case == "reference_box":
        ref = tmp_path / "ref.mrc"
        write_volume(ref, np.zeros((16, 16, 16), np.float32), 2.0)
        args += ["--reference", str(ref)]
        named = str(ref)
    elif case == "odd_box_reference":
        ref = tmp_path / "odd.mrc"
        write_volume(ref, np.zeros((15, 15, 15), np.float32), 2.0)
        args += ["--reference", str(ref)]
        named = str(ref)
    before = {p: _sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "Traceback" not in err[0]
    assert pathlib.Path(named).name in err[0]
    for p, h in before.items():
        assert _sha(p) == h


"""`cryolens demo` runs the whole journey (simulate → back-project → score) in one folder."""

import json

from cryolens.cli.main import main


def test_demo_small(tmp_path, capsys):
    """A small demo: dataset with ground truth, maps, metrics against the truth, plots, report;
    the map is closer to the truth than the Nyquist limit would allow by chance (FSC 0.5 well below
    the box size)."""
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--n", "300", "--box", "32", "--apix", "3.0", "--snr", "1", "--quiet"])
    assert rc == 0
    for name in ("dataset/particles.star", "dataset/particles.mrcs", "dataset/ground_truth/volume_000.mrc",
                 "map.mrc", "half1.mrc", "half2.mrc", "metrics.json", "fsc.png", "sections.png", "report.html"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "4E43" and m["n_images"] == 300
    assert 6.0 <= m["resolution_vs_ground_truth_05_A"] < 20.0
    assert "report" in capsys.readouterr().out


def test_demo_rejects_odd_box(tmp_path, capsys):
    """An odd box is refused with one line and exit code 2, before anything is simulated."""
    rc = main(["demo", "--out", str(tmp_path / "d"), "--box", "33", "--n", "10", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "even" in err[0]
    assert not (tmp_path / "d" / "dataset" / "particles.mrcs").exists()

"""`cryolens bench` end to end on the tiny suite: run (with the leaderboard and a Markdown copy),
report, sweep over seeds, error injection (resolution worsens with the injected pose error),
list, and bad input as exit code 2 with one line."""

import json

from cryolens.cli.main import main


def test_bench_run_report_sweep_inject(tmp_path, capsys, bench_cache):
    """run → leaderboard.md/json + per-run report.html; report rewrites them; sweep over two seeds
    writes sweep.png; injecting 20° pose errors gives a worse map than none."""
    cache, out = str(bench_cache), tmp_path / "out"
    rc = main(["bench", "run", "--tasks", "tiny", "--only", "homogeneous-poses", "--methods", "backprojection",
               "--out", str(out), "--cache", cache, "--budget-s", "120", "--markdown", str(tmp_path / "LB.md"),
               "--score-times", "30,90"])
    assert rc == 0
    assert "--score-times 30,90" in json.loads((out / "leaderboard.json").read_text())["command"]
    assert "| backprojection |" in (tmp_path / "LB.md").read_text()
    assert (tmp_path / "LB_plots" / "fsc_homogeneous-poses-snr1.png").is_file()
    assert (out / "report.html").is_file() and (out / "leaderboard.json").is_file()
    assert main(["bench", "report", str(out)]) == 0
    rc = main(["bench", "sweep", "--tasks", "tiny", "--task", "homogeneous-poses-snr1", "--method", "backprojection",
               "--seeds", "0,1", "--out", str(tmp_path / "sw"), "--cache", cache])
    assert rc == 0 and (tmp_path / "sw" / "sweep.png").is_file()
    sw = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert len(sw["runs"]) == 2 and all(r["status"] == "ok" for r in sw["runs"])
    rc = main(["bench", "inject", "--tasks", "tiny", "--task", "homogeneous-poses-snr1", "--pose-errors", "0,20",
               "--defocus-errors", "", "--out", str(tmp_path / "inj"), "--cache", cache])
    assert rc == 0
    inj = json.loads((tmp_path / "inj" / "injection.json").read_text())
    assert inj["pose"][1]["resolution_A"] > inj["pose"][0]["resolution_A"]
    assert main(["bench", "list", "--tasks", "tiny"]) == 0
    assert "homogeneous-poses-snr1" in capsys.readouterr().out


def test_bench_bad_input(tmp_path, capsys):
    """An unknown method or task file: exit code 2 and one line naming it."""
    assert main(["bench", "run", "--tasks", "tiny", "--methods", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err
    assert main(["bench", "run", "--tasks", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_bench_suite_with_unknown_option(tmp_path, capsys):
    """A suite file whose method_config names an option the recipe does not have (a typo, or a renamed
    option): refused before anything runs, one line naming the file, the method and the option with the
    near match — not run silently with the default (as cryosparc-abinit's lost refine_options was)."""
    import importlib.resources

    text = (importlib.resources.files("cryolens.bench") / "tasks" / "tiny.yaml").read_text()
    suite = tmp_path / "typo.yaml"
    suite.write_text(text + "method_config:\n  backprojection: {batch_sise: 64}\n")
    out = tmp_path / "o"
    assert main(["bench", "run", "--tasks", str(suite), "--methods", "backprojection", "--out", str(out),
                 "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "typo.yaml" in err and "batch_sise" in err and "did you mean batch_size" in err, err
    assert not (tmp_path / "cache").exists() and not (out / "runs").exists()

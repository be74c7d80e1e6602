"""Score against wall time (cryolens.bench.timeline, cryolens.inference.snapshots):

- the engine keeps a checkpoint copy at the first save after each requested time, and only inside
  ``checkpoint_snapshots``;
- a benchmark run of a learned recipe has a timeline of ≥ 2 points, and the point scored from the
  epoch-1 snapshot of a 2-epoch run equals the final score of a separate 1-epoch run (resume is
  bit-for-bit on the CPU): the snapshot is scored by the same code as a finished run;
- which method leads at a time, by hand; the leaderboard's table and plot.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from cryolens.bench.leaderboard import time_table, write_leaderboard
from cryolens.bench.runner import available_methods, run_suite
from cryolens.bench.suite import load_tasks
from cryolens.bench.timeline import ahead_at, series, value_at
from cryolens.inference.snapshots import checkpoint_snapshots, read_snapshots, take_snapshot


def test_snapshots_at_requested_times_only_while_active(tmp_path):
    """Times 0 and 0 (both passed) give one copy at the first save, a far time none; the copy is the
    checkpoint's bytes, listed with its epoch and step; nothing is copied outside the context."""
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(b"epoch one")
    take_snapshot(ck, 1, 10)  # no plan active
    with checkpoint_snapshots(tmp_path / "snaps", (0.0, 0.0, 1e6)) as taken:
        take_snapshot(ck, 1, 10)
        ck.write_bytes(b"epoch two")
        take_snapshot(ck, 2, 20)
    take_snapshot(ck, 3, 30)
    assert len(taken) == 1 and read_snapshots(tmp_path / "snaps") == taken
    assert (taken[0]["epoch"], taken[0]["step"]) == (1, 10) and taken[0]["elapsed_s"] >= 0
    assert (tmp_path / "snaps" / taken[0]["file"]).read_bytes() == b"epoch one"
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["snapshot_000.pt", "snapshots.json"]


def test_value_and_leader_at_times_by_hand():
    """Step functions: a score holds from its time until the next point; before the first point there
    is none. Lower is better for a resolution."""
    a = (np.array([10.0, 100.0]), np.array([0.1, 0.3]))
    b = (np.array([50.0]), np.array([0.2]))
    assert value_at(*a, 9.0) is None and value_at(*a, 10.0) == 0.1 and value_at(*a, 99.0) == 0.1
    assert ahead_at({"a": a, "b": b}, (5.0, 20.0, 60.0, 100.0)) == [None, ("a", 0.1), ("b", 0.2), ("a", 0.3)]
    assert ahead_at({"a": a, "b": b}, (60.0,), higher_is_better=False) == [("a", 0.1)]


@pytest.fixture(scope="module")
def timeline_runs(bench_cache, tmp_path_factory):
    """cryoDRGN (our recipe) on the tiny continuous task: 2 epochs with a snapshot at the first save,
    and 1 epoch with none."""
    task = next(t for t in load_tasks("tiny") if t.name == "continuous-poses-snr1")
    methods = available_methods(["cryodrgn", "backprojection"], include_adapters=False)
    small = {"epochs": 2, "enc_dim": 32, "dec_dim": 32, "batch_size": 16, "zdim": 1}
    out2 = tmp_path_factory.mktemp("two_epochs")
    rows2 = run_suite([task], methods, out2, budget_s=300, cache_dir=bench_cache, halves=False,
                      overrides={"cryodrgn": small}, snapshot_times_s=(0.0,))
    out1 = tmp_path_factory.mktemp("one_epoch")
    rows1 = run_suite([task], {"cryodrgn": methods["cryodrgn"]}, out1, budget_s=300, cache_dir=bench_cache,
                      halves=False, overrides={"cryodrgn": {**small, "epochs": 1}}, snapshot_times_s=())
    return out2, rows2, rows1


def test_snapshot_point_equals_a_run_stopped_there(timeline_runs):
    """The 2-epoch run's timeline: the epoch-1 snapshot point, then the final point (= result.json's
    score at fit_s); the snapshot point's per-image FSC-AUC and latent R² equal those of the separate
    1-epoch run; back-projection (not trained on the engine) has its final point only."""
    _, rows2, rows1 = timeline_runs
    drgn = next(r for r in rows2 if r["method"] == "cryodrgn")
    assert drgn["status"] == "ok" and drgn["timeline_status"] == "ok"
    pts = json.loads((Path(drgn["run_dir"]) / "timeline.json").read_text())
    assert [p.get("epoch") for p in pts] == [1, None] and pts[1]["final"]
    assert pts[0]["elapsed_s"] < pts[1]["elapsed_s"] == pytest.approx(drgn["metrics"]["fit_s"])
    key = "per_image_fsc_auc_mean"
    assert pts[1]["metrics"][key] == drgn["metrics"][key]
    one = rows1[0]["metrics"]
    assert pts[0]["metrics"][key] == pytest.approx(one[key], abs=1e-6)
    assert pts[0]["metrics"]["latent_truth_r2"] == pytest.approx(one["latent_truth_r2"], abs=1e-6)
    t, v = series(drgn, key)
    assert len(t) == 2 and v[1] == drgn["metrics"][key]
    bp = next(r for r in rows2 if r["method"] == "backprojection")
    assert "timeline_status" not in bp and len(series(bp, key)[0]) == 1


def test_leaderboard_shows_score_against_time(timeline_runs):
    """leaderboard.md has the time table (the leader at 1 min is the one with the best score by then,
    computed here from the rows) and a score_vs_time PNG for the task."""
    out2, rows2, _ = timeline_runs
    board = write_leaderboard(out2)
    lines = time_table(rows2)
    assert any("ahead at 1 min" in ln for ln in lines) and "\n".join(lines) in board["markdown"]
    curves = {r["method"]: series(r, "per_image_fsc_auc_mean") for r in rows2}
    best = max(((m, value_at(*c, 60.0)) for m, c in curves.items() if value_at(*c, 60.0) is not None),
               key=lambda mv: mv[1])
    row = next(ln for ln in lines if ln.startswith("| continuous-poses-snr1"))
    assert row.split(" | ")[2].startswith(best[0])
    png = out2 / "plots" / "score_vs_time_continuous-poses-snr1.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"

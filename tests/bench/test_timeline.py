"""Score against wall time (cryolens.bench.timeline, cryolens.inference.snapshots):

- the engine keeps a checkpoint copy at the first save after each requested time, and only inside
  ``checkpoint_snapshots``;
- a benchmark run of a learned recipe has a timeline of ≥ 2 points, and the point scored from the
  epoch-1 snapshot of a 2-epoch run equals the score of the same recipe trained for 1 epoch (resume is
  bit-for-bit on the CPU): the snapshot is scored by the same code as a finished run;
- the cryoDRGN peer's saved epochs become points, timed by its log;
- which method leads at a time, by hand; the leaderboard's table and plot.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryolens.bench.cryodrgn import epoch_stamps
from cryolens.bench.leaderboard import time_table, write_leaderboard
from cryolens.bench.runner import available_methods, run_suite
from cryolens.bench.scoring import Truth, score
from cryolens.bench.suite import ensure_dataset, load_tasks
from cryolens.bench.withhold import strip_unknown
from cryolens.bench.timeline import ahead_at, series, value_at
from cryolens.inference.snapshots import checkpoint_snapshots, read_snapshots, take_snapshot
from cryolens.io.runfolder import RunFolder
from cryolens.io.star import read_star


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
    """cryoDRGN (our recipe, small) on the tiny continuous task through the runner: 2 epochs with a
    snapshot at the first save; and, in this process, the same recipe trained for 1 epoch and scored
    (the reference)."""
    task = next(t for t in load_tasks("tiny") if t.name == "continuous-poses-snr1")
    task.scores = ["per_image_fsc_auc", "latent_truth", "per_conformation_fsc"]  # those checked here (others cost time)
    methods = available_methods(["cryodrgn"], include_adapters=False)
    small = {"epochs": 2, "enc_dim": 32, "dec_dim": 32, "batch_size": 16, "zdim": 1}
    out2 = tmp_path_factory.mktemp("two_epochs")
    rows2 = run_suite([task], methods, out2, budget_s=300, cache_dir=bench_cache, halves=False,
                      overrides={"cryodrgn": small}, snapshot_times_s=(0.0,))
    ds = ensure_dataset(task, bench_cache)
    recipe = methods["cryodrgn"].recipe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the runner's process
    try:
        particles = strip_unknown(read_star(ds / "particles.star"), task.known)
        out = recipe.fit(particles, task.known, RunFolder(tmp_path_factory.mktemp("one_epoch")),
                         recipe.config({**small, "epochs": 1}), torch.device("cpu"), False)
        one, _ = score(task, Truth(ds), out, task.known, device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return out2, rows2, one


def test_snapshot_point_equals_a_run_stopped_there(timeline_runs):
    """The 2-epoch run's timeline: the epoch-1 snapshot point, then the final point (= result.json's
    score at fit_s); the snapshot point's per-image FSC-AUC and latent R² equal those of the separate
    1-epoch run; back-projection (not trained on the engine) has its final point only."""
    _, rows2, one = timeline_runs
    drgn = next(r for r in rows2 if r["method"] == "cryodrgn")
    assert drgn["status"] == "ok" and drgn["timeline_status"] == "ok"
    pts = json.loads((Path(drgn["run_dir"]) / "timeline.json").read_text())
    assert [p.get("epoch") for p in pts] == [1, None] and pts[1]["final"]
    assert pts[0]["elapsed_s"] < pts[1]["elapsed_s"] == pytest.approx(drgn["metrics"]["fit_s"])
    key = "per_image_fsc_auc_mean"
    assert pts[1]["metrics"][key] == drgn["metrics"][key]
    assert pts[0]["metrics"][key] == pytest.approx(one[key], abs=1e-6)
    assert pts[0]["metrics"]["latent_truth_r2"] == pytest.approx(one["latent_truth_r2"], abs=1e-6)
    # a snapshot skips the scores that decode a map per conformation; the final point has them
    assert "conformation_mean_auc" in pts[1]["metrics"] and "conformation_mean_auc" not in pts[0]["metrics"]
    t, v = series(drgn, key)
    assert len(t) == 2 and v[1] == drgn["metrics"][key]


def test_leaderboard_shows_score_against_time(timeline_runs, tmp_path):
    """leaderboard.md of the run has the time table and a score_vs_time PNG for the task; with a second
    method's row added by hand (final score 0.3 at 90 s, none before), the table names cryodrgn at
    1 min (its latest point by then; "none yet" if it had none) and that method at 5 and 20 min and
    best final when its 0.3 beats cryodrgn's final score; the budget of the runs."""
    out2, rows2, _ = timeline_runs
    board = write_leaderboard(out2)
    lines = time_table(rows2)
    assert any("ahead at 1 min" in ln for ln in lines) and "\n".join(lines) in board["markdown"]
    png = out2 / "plots" / "score_vs_time_continuous-poses-snr1.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    drgn = rows2[0]
    key = "per_image_fsc_auc_mean"
    other = {"task": drgn["task"], "method": "other", "status": "ok", "heterogeneity": "continuous",
             "budget_s": drgn["budget_s"], "metrics": {key: 0.3, "fit_s": 90.0}}
    t, v = series(drgn, key)
    cells = next(ln for ln in time_table([*rows2, other]) if ln.startswith("| continuous")).split(" | ")
    at_1 = value_at(t, v, 60.0)
    assert cells[2] == ("none yet" if at_1 is None else f"cryodrgn ({at_1:.3g})")
    assert cells[3] == cells[4] == ("other (0.3)" if v[-1] < 0.3 else f"cryodrgn ({v[-1]:.3g})")
    assert cells[-1] == "300 |"


def test_cryodrgn_epoch_stamps():
    """The end time of each epoch from cryoDRGN's log lines (its logger's format), as POSIX seconds."""
    import datetime

    log = ("(INFO) (train_vae.py) (06-Dec-2026 01:10:00) # =====> Epoch: 0 Average gen loss = 0.6; "
           "Finished in 0:00:03\n"
           "(INFO) (train_vae.py) (06-Dec-2026 01:10:07) # =====> Epoch: 1 Average gen loss = 0.5; "
           "Finished in 0:00:07\n"
           "(INFO) (train_vae.py) (06-Dec-2026 01:10:09) Training complete\n")
    t0 = datetime.datetime(2026, 12, 6, 1, 10, 0).timestamp()
    assert epoch_stamps(log) == {0: t0, 1: t0 + 7.0}


def test_cryodrgn_peer_scored_per_saved_epoch(tmp_path, monkeypatch, bench_cache):
    """The cryoDRGN peer with a stand-in module (cryoDRGN itself not run): it is asked for --checkpoint 1,
    each epoch whose weights it saved becomes a timeline point at its log time (but the last, which is
    the final point), finished from that epoch's latents and weights (latents = the truth after epoch 1,
    noise after epoch 0: the latent R² of the points is ≈ 1 and < 0.5)."""
    import sys
    import time
    import types

    from cryolens.simulate.dataset import read_ground_truth

    task = next(t for t in load_tasks("tiny") if t.name == "continuous-poses-snr1")
    task.scores = ["per_image_fsc_auc", "latent_truth", "per_conformation_fsc"]  # those checked here (others cost time)
    truth = np.asarray(read_ground_truth(ensure_dataset(task, bench_cache))["hinge_angle_deg"], dtype=np.float32)
    noise = np.random.default_rng(0).normal(size=len(truth)).astype(np.float32)
    latents = {0: noise[:, None], 1: truth[:, None], None: truth[:, None]}
    mod = types.ModuleType("cryolens.bench.cryodrgn")

    def train_vae(inputs, outdir, **kw):  # runs in the run's forked process: its arguments go to a file
        (tmp_path / "extra.json").write_text(json.dumps(kw["extra"]))
        Path(outdir).mkdir(parents=True, exist_ok=True)
        for e in (0, 1, 2):
            (Path(outdir) / f"weights.{e}.pkl").write_bytes(b"")
        stamp = time.strftime("%d-%b-%Y %H:%M:%S", time.localtime(time.time() + 1))
        log = "".join(f"(INFO) (train_vae.py) ({stamp}) # =====> Epoch: {e} loss\n" for e in (0, 1, 2))
        return types.SimpleNamespace(wall_s=1.0, peak_rss_mib=1.0, log=log)

    def eval_vol(outdir, z, out, pixel_size, threads=1, epoch=None):
        return [len(z)]

    mod.prepare_inputs = lambda particles, folder: types.SimpleNamespace()
    mod.train_vae = mod.train_nn = train_vae
    mod.read_latents = lambda outdir, epoch=None: latents[epoch]
    mod.eval_vol = eval_vol
    mod.read_maps = lambda paths: np.ones((paths[0], 16, 16, 16), dtype=np.float32)
    mod.cryodrgn_program = lambda: Path("/bin/true")
    mod.epoch_stamps = epoch_stamps
    monkeypatch.setitem(sys.modules, "cryolens.bench.cryodrgn", mod)
    rows = run_suite([task], available_methods(["cryodrgn-4.3"]), tmp_path / "out", budget_s=120,
                     cache_dir=bench_cache, halves=False,
                     overrides={"cryodrgn-4.3": {"checkpoint_every": 1, "epochs": 2}})
    assert rows[0]["status"] == "ok" and rows[0]["timeline_status"] == "ok"
    assert json.loads((tmp_path / "extra.json").read_text()) == ["--checkpoint", "1"]
    pts = json.loads((Path(rows[0]["run_dir"]) / "timeline.json").read_text())
    assert [p.get("epoch") for p in pts] == [0, 1, None] and all(0 <= p["elapsed_s"] < 10 for p in pts)
    r2 = [p["metrics"]["latent_truth_r2"] for p in pts]
    assert r2[0] < 0.5 and r2[1] == pytest.approx(1.0, abs=1e-6) and r2[2] == pytest.approx(1.0, abs=1e-6)

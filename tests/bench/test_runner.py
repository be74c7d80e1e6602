"""The runner and leaderboard end to end on the tiny suite (D = 16, 160 images):

- a recipe added by its registry entry alone is run on every compatible task and appears on the
  leaderboard (registered in the test, unregistered after);
- what a task withholds is removed before ``fit`` (the recipe sees no poses on a "nopose" task);
- a run over its time or memory budget is recorded as such and the suite goes on;
- heterogeneous outputs are scored: class accuracy of the true labels is 1, per-image FSC-AUC of
  the true maps is 0.5 (the analytic maximum), conformational W2 of identical halves is 0.
"""

import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cryolens.bench.leaderboard import write_leaderboard
from cryolens.bench.runner import available_methods, compatible, run_suite, strip_unknown
from cryolens.bench.suite import load_tasks
from cryolens.io.star import read_star
from cryolens.methods.config import RecipeConfig, option
from cryolens.methods.registry import MethodOutputs, Recipe, register, unregister
from cryolens.simulate.dataset import read_ground_truth
from cryolens.io.mrc import read_volume

SEEN = {}


@dataclass(frozen=True)
class _OracleConfig(RecipeConfig):
    dataset: str = option("", "the dataset folder whose truth the oracle reads")


def _blob_fit(particles, known, run, config, device, progress):
    """A trivial homogeneous recipe: a centred Gaussian blob, whatever the data."""
    SEEN[known.poses] = particles.rotations is None
    d = particles.box_size
    r = torch.arange(d, dtype=torch.float32) - d // 2
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    return MethodOutputs(pixel_size=particles.pixel_size, volume=torch.exp(-(xx**2 + yy**2 + zz**2) / 8.0))


def _oracle_fit(particles, known, run, config, device, progress):
    """A discrete 'oracle' reading the truth from the dataset folder (tests the scoring only)."""
    ds = config.dataset
    gt = read_ground_truth(ds)
    order = np.asarray(particles.image_index)
    labels = gt["labels"][order]
    vols = torch.stack([torch.from_numpy(read_volume(p)[0].copy()) for p in gt["volume_files"]])
    latents = labels[:, None].astype(np.float32) + 0.0
    return MethodOutputs(pixel_size=particles.pixel_size, volumes=vols, labels=labels, latents=latents,
                         decode=lambda z: vols[z[:, 0].round().long().cpu()].to(z.device))


@pytest.fixture
def tiny(bench_cache):
    return load_tasks("tiny"), bench_cache


def test_trivial_recipe_appears_on_the_leaderboard(tiny, tmp_path):
    """Registered here, 'blob-test' runs on the homogeneous tasks (poses known — when the task allows
    pose estimators there — and unknown: it needs nothing), is stripped of the poses on the nopose
    task, and shows in leaderboard.md / .json; its resolution against the truth is worse than
    back-projection's on the same task."""
    tasks, cache = tiny
    register(Recipe(name="blob-test", fit=_blob_fit, summary="a blob", heterogeneity="homogeneous"))
    try:
        methods = available_methods(["blob-test", "backprojection"])
        homo = [t for t in tasks if t.heterogeneity == "homogeneous"]
        # a pose-estimating recipe skips poses-known tasks unless the task asks for it
        assert [compatible(methods["blob-test"].recipe, t) for t in homo] == [False, True]
        for t in homo:
            t.options["pose_estimators_on_known_poses"] = True
        rows = run_suite(homo, methods, tmp_path / "out", budget_s=120, cache_dir=cache)
    finally:
        unregister("blob-test")
    assert {(r["task"], r["method"]) for r in rows} == {
        ("homogeneous-poses-snr1", "blob-test"), ("homogeneous-poses-snr1", "backprojection"),
        ("homogeneous-nopose-snr1", "blob-test")}
    assert all(r["status"] == "ok" for r in rows)
    board = write_leaderboard(tmp_path / "out", "cryolens bench run --tasks tiny")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| blob-test |" in md and "cryolens bench run --tasks tiny" in md
    js = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert {r["method"] for r in js["rows"]} == {"blob-test", "backprojection"}
    res = {(r["task"], r["method"]): r["metrics"]["gt_resolution_A"] for r in board["rows"]}
    assert res[("homogeneous-poses-snr1", "backprojection")] < res[("homogeneous-poses-snr1", "blob-test")]
    assert (tmp_path / "out" / "runs" / "homogeneous-poses-snr1" / "blob-test" / "report.html").is_file()
    assert (tmp_path / "out" / "plots" / "resolution_vs_snr.png").is_file()


def test_strip_unknown_removes_poses_and_ctf(tiny):
    """strip_unknown keeps only what Known gives."""
    from cryolens.bench.suite import ensure_dataset
    from cryolens.methods.registry import Known

    tasks, cache = tiny
    p = read_star(ensure_dataset(tasks[0], cache) / "particles.star")
    s = strip_unknown(p, Known(poses=False, ctf=False))
    assert s.rotations is None and s.shifts is None and s.ctf is None and len(s) == len(p)
    k = strip_unknown(p, Known(poses=True, ctf=True))
    assert torch.equal(k.rotations, p.rotations) and k.ctf is not None


def _sleepy_fit(particles, known, run, config, device, progress):
    time.sleep(60)


def _hungry_fit(particles, known, run, config, device, progress):
    x = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    time.sleep(30)
    return x


def test_over_budget_runs_are_recorded_and_the_suite_goes_on(tiny, tmp_path):
    """A recipe sleeping 60 s under a 5 s budget is killed and recorded 'over_time' (the next method
    on the task still runs); one holding 400 MB under a 300 MB budget is killed 'over_memory'."""
    tasks, cache = tiny
    needs = frozenset({"poses", "ctf"})
    register(Recipe(name="sleepy-test", fit=_sleepy_fit, summary="sleeps", needs=needs))
    register(Recipe(name="hungry-test", fit=_hungry_fit, summary="eats memory", needs=needs))
    try:
        t0 = time.time()
        rows = run_suite(tasks[:1], available_methods(["sleepy-test", "backprojection"]), tmp_path / "out",
                         budget_s=5, memory_mb=300, cache_dir=cache)
        rows += run_suite(tasks[:1], available_methods(["hungry-test"]), tmp_path / "out2", budget_s=60,
                          memory_mb=300, cache_dir=cache)
    finally:
        unregister("sleepy-test")
        unregister("hungry-test")
    status = {r["method"]: r["status"] for r in rows}
    assert status["sleepy-test"] == "over_time"
    assert status["hungry-test"] == "over_memory"
    assert "over_time" in (tmp_path / "out/runs/homogeneous-poses-snr1/sleepy-test/report.html").read_text()
    assert status["backprojection"] in ("ok", "over_time")
    assert time.time() - t0 < 60


def test_heterogeneous_scoring_of_the_truth(tiny, tmp_path):
    """An oracle discrete recipe returning the true maps, labels and per-image maps scores class
    accuracy 1, per-image FSC-AUC 0.5 (the maximum), per-conformation FSC 1 at every shell, and the
    clustering of its maps agrees with the truth's (Rand index 1)."""
    tasks, cache = tiny
    task = next(t for t in tasks if t.name == "discrete-poses-snr1")
    from cryolens.bench.suite import ensure_dataset

    ds = ensure_dataset(task, cache)
    task.options = {"method_config": {"oracle-test": {"dataset": str(ds)}}}
    register(Recipe(name="oracle-test", fit=_oracle_fit, summary="truth", config=_OracleConfig,
                    needs=frozenset({"poses", "ctf"}), heterogeneity="discrete"))
    try:
        rows = run_suite([task], available_methods(["oracle-test"]), tmp_path / "out", budget_s=120, cache_dir=cache)
    finally:
        unregister("oracle-test")
    m = rows[0]["metrics"]
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert m["class_accuracy"] == 1.0
    assert m["per_image_fsc_auc_mean"] == pytest.approx(0.5, abs=1e-6)
    assert m["conformation_mean_auc"] == pytest.approx(0.5, abs=1e-6)
    assert m["clustering_mean_rand_index"] == 1.0


def _continuous_oracle_fit(particles, known, run, config, device, progress):
    """A continuous 'oracle': latent = the true hinge angle (plus a second, constant coordinate),
    decode = the true map of the nearest state."""
    gt = read_ground_truth(config.dataset)
    idx = np.asarray(particles.image_index)
    vols = torch.stack([torch.from_numpy(read_volume(p)[0].copy()) for p in gt["volume_files"]])
    angles = gt["state_values"]
    z = np.stack([gt["hinge_angle_deg"][idx], np.zeros(len(idx))], 1).astype(np.float32)

    def decode(zz):
        k = torch.as_tensor(np.abs(zz[:, :1].cpu().numpy() - angles[None]).argmin(1))
        return vols[k].to(zz.device)

    return MethodOutputs(pixel_size=particles.pixel_size, latents=z, decode=decode, volume=vols.mean(0))


def test_continuous_scoring_with_halves(tiny, tmp_path):
    """The continuous oracle: latents map to the truth with R² = 1, per-image FSC-AUC is 0.5, and
    the two half-data fits (run by the runner for conformational resolution) agree to a W2 far below
    the latent spread."""
    tasks, cache = tiny
    from cryolens.bench.suite import ensure_dataset

    task = next(t for t in tasks if t.name == "continuous-poses-snr1")
    task.options = {"method_config": {"cont-oracle-test": {"dataset": str(ensure_dataset(task, cache))}}}
    register(Recipe(name="cont-oracle-test", fit=_continuous_oracle_fit, summary="truth", config=_OracleConfig,
                    needs=frozenset({"poses", "ctf"}), heterogeneity="continuous"))
    try:
        rows = run_suite([task], available_methods(["cont-oracle-test"]), tmp_path / "out", budget_s=120,
                         cache_dir=cache)
    finally:
        unregister("cont-oracle-test")
    m = rows[0]["metrics"]
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert m["latent_truth_r2"] == pytest.approx(1.0, abs=1e-6)
    assert m["per_image_fsc_auc_mean"] == pytest.approx(0.5, abs=1e-6)
    assert m["conformational_w2_relative"] < 0.35
    assert (tmp_path / "out/runs/continuous-poses-snr1/cont-oracle-test/latents.png").is_file()


def _pose_oracle_fit(particles, known, run, config, device, progress):
    """Returns the true map and the true poses rotated by a global G (a rotated frame)."""
    gt = read_ground_truth(config.dataset)
    g = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    vol = torch.from_numpy(read_volume(gt["volume_files"][0])[0].copy())
    return MethodOutputs(pixel_size=particles.pixel_size, volume=vol,
                         rotations=g.T @ torch.as_tensor(gt["rotations"])[np.asarray(particles.image_index)])


def test_rescore_from_the_run_folder(tiny, tmp_path):
    """A run with unknown poses is scored again from its files alone (map.mrc, saved poses): the
    same pose error (0 modulo the global rotation) and resolution (Nyquist) as the first scoring."""
    from cryolens.bench.rescore import rescore

    tasks, cache = tiny
    from cryolens.bench.suite import ensure_dataset

    task = next(t for t in tasks if t.name == "homogeneous-nopose-snr1")
    task.options = {"method_config": {"pose-oracle-test": {"dataset": str(ensure_dataset(task, cache))}}}
    register(Recipe(name="pose-oracle-test", fit=_pose_oracle_fit, summary="truth", config=_OracleConfig,
                    needs=frozenset({"ctf"})))
    try:
        rows = run_suite([task], available_methods(["pose-oracle-test"]), tmp_path / "out", budget_s=120,
                         cache_dir=cache)
    finally:
        unregister("pose-oracle-test")
    first = rows[0]["metrics"]
    again = rescore(tmp_path / "out")
    assert len(again) == 1 and again[0]["rescored"]
    m = again[0]["metrics"]
    assert first["pose_error_median_deg"] < 1e-3 and m["pose_error_median_deg"] < 1e-3
    assert m["gt_resolution_A"] == pytest.approx(first["gt_resolution_A"]) == pytest.approx(12.0)

"""Tasks as data: the default suite's grid, the cache keyed by the dataset spec (tasks differing
only in what is known share one dataset; a different SNR gets another), bad task files as one-line
errors, and the preferred-orientation distribution's measured spread."""

import math

import numpy as np
import pytest
import torch

from cryolens.bench.suite import _preferred_rotations, ensure_dataset, load_tasks, parse_tasks, scale_task
from cryolens.errors import InputError
from cryolens.simulate.dataset import read_ground_truth


def test_default_suite_is_the_full_grid():
    """3 heterogeneities × poses known/unknown × SNR {1, 0.1, 0.01} = 18 tasks, each with a CTF given."""
    tasks = load_tasks("default")
    assert len(tasks) == 18
    assert {(t.heterogeneity, t.known.poses, t.snr) for t in tasks} == {
        (h, p, s) for h in ("homogeneous", "discrete", "continuous") for p in (True, False) for s in (1, 0.1, 0.01)}
    assert all(t.known.ctf for t in tasks)
    assert scale_task(tasks[0], 10).dataset["n_images"] == 10 * tasks[0].dataset["n_images"]


def test_cache_is_keyed_by_the_dataset_spec(tmp_path):
    """poses-known and nopose tasks of one SNR hash alike and share one folder (simulated once:
    its files are not rewritten); the dataset holds the spec's N and K states."""
    tasks = {t.name: t for t in load_tasks("tiny")}
    a, b = tasks["discrete-poses-snr1"], tasks["discrete-nopose-snr1"]
    assert a.dataset_hash() == b.dataset_hash() != tasks["homogeneous-poses-snr1"].dataset_hash()
    pa = ensure_dataset(a, tmp_path)
    mtime = (pa / "particles.mrcs").stat().st_mtime_ns
    assert ensure_dataset(b, tmp_path) == pa and (pa / "particles.mrcs").stat().st_mtime_ns == mtime
    gt = read_ground_truth(pa)
    assert gt["labels"].shape == (160,) and len(gt["volume_files"]) == 2


def test_bad_task_files(tmp_path):
    """Unknown heterogeneity, odd box, unknown score: InputError naming the file and task."""
    base = {"box": 16, "pixel_size": 3.0, "n_images": 10, "snr": 1.0}
    with pytest.raises(InputError, match="heterogeneity kind"):
        parse_tasks({"base": base, "tasks": [{"name": "x", "heterogeneity": {"kind": "wobbly"}}]}, "f.yaml")
    with pytest.raises(InputError, match="f.yaml: task x: box 15 is odd"):
        parse_tasks({"base": {**base, "box": 15}, "tasks": [{"name": "x"}]}, "f.yaml")
    with pytest.raises(InputError, match="unknown scores"):
        parse_tasks({"base": base, "tasks": [{"name": "x", "scores": ["beauty"]}]}, "f.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        load_tasks(bad)
    with pytest.raises(InputError, match="neither a task file nor a built-in suite"):
        load_tasks("no-such-suite")


def test_preferred_orientation_spread():
    """Viewing directions R·ẑ of the preferred distribution with σ = 15°: the mean tilt of a folded
    normal is σ·sqrt(2/π) ≈ 12.0°, measured within 1° on 4,000 draws; uniform would give 90°."""
    r = _preferred_rotations(4000, 15.0, torch.Generator().manual_seed(0)).double()
    tilt = np.degrees(np.arccos(np.clip(r[:, 2, 2].numpy(), -1, 1)))
    assert abs(tilt.mean() - 15.0 * math.sqrt(2 / math.pi)) < 1.0


@pytest.mark.parametrize("suite", ["default", "tiny", "preferred"])
def test_every_option_a_suite_sets_exists(suite):
    """Each option a bundled suite sets for a method is an option of that recipe or adapter, and
    survives coercion to the recipe's typed config with the suite's value. (The runner refuses an
    unknown option since the bundled suite's nested refine_options of cryosparc-abinit were silently
    dropped when the configs became typed; this checks the bundled files themselves, values included.)"""
    from cryolens.bench.runner import available_methods
    from cryolens.methods.config import as_dict

    pool = available_methods()
    named = 0
    for task in load_tasks(suite):
        for name, opts in (task.options.get("method_config") or {}).items():
            if name not in pool:
                continue
            assert not set(opts) - set(pool[name].recipe.defaults), (suite, name, set(opts))
            cfg = as_dict(pool[name].recipe.config(dict(opts)))
            for key, value in opts.items():
                got = list(cfg[key]) if isinstance(cfg[key], (list, tuple)) else cfg[key]
                assert got == value, (suite, name, key, got, value)
            named += 1
    if suite == "default":
        assert named > 0


def test_atomic_model_methods_get_the_tasks_model(tmp_path):
    """A suite's ``atomic_model.methods`` get the task's model file (the one its states are simulated from,
    state 0 as read) as their ``model`` option, unless the suite or the caller sets one; other methods and
    recipes without a ``model`` option are untouched."""
    from cryolens.bench.runner import _config_for, available_methods
    from cryolens.simulate import bundled_model

    pool = available_methods(["cryofold", "atomvae", "e2gmm"])
    task = [t for t in load_tasks("default") if t.name == "continuous-poses-snr1"][0]
    assert task.options["atomic_model"]["methods"] == ["cryofold", "atomvae"]
    got = _config_for(pool["cryofold"], task, tmp_path, {})
    assert got.model == str(bundled_model("4E43")) and got.epochs == 4
    assert _config_for(pool["atomvae"], task, tmp_path, {}).model == str(bundled_model("4E43"))
    assert _config_for(pool["cryofold"], task, tmp_path, {"cryofold": {"model": "mine.pdb"}}).model == "mine.pdb"
    assert _config_for(pool["e2gmm"], task, tmp_path, {}).model is None

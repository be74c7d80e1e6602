"""A new recipe is one file: a throw-away module, written here into a temporary folder and built only
from the public interfaces (a real-space voxel grid ``volumes.voxel.RealVoxelVolume`` seen through
``imaging.forward.ProjectorForward``, fitted by Adam at the known poses), registers itself at import
and is then listed by ``cryolens recipes``, runs from ``cryolens train NAME`` with a flag generated
from its config, and shows up on the benchmark leaderboard — with no other file edited."""

import importlib.util
import json
import sys
import textwrap

import pytest

from cryolens.cli.main import main
from cryolens.methods.registry import recipes, unregister

NAME = "sgd-voxel-test"

MODULE = textwrap.dedent('''
    """Throw-away recipe: a voxel grid fitted by SGD (Adam) at the known poses and CTFs."""
    from dataclasses import dataclass

    import torch

    from cryolens.imaging.forward import ProjectorForward
    from cryolens.io.dataset import iterate_batches
    from cryolens.methods.config import RecipeConfig, option
    from cryolens.methods.registry import MethodOutputs, Recipe, register
    from cryolens.volumes.voxel import RealVoxelVolume


    @dataclass(frozen=True)
    class SGDVoxelConfig(RecipeConfig):
        steps: int = option(50, "optimizer steps")
        lr: float = option(0.05, "Adam learning rate")
        batch_size: int = option(32, "images per step")


    def fit(particles, known, run, config, device=None, progress=True):
        torch.manual_seed(config.seed)
        grid, forward = RealVoxelVolume(particles.box_size), ProjectorForward()
        opt = torch.optim.Adam(grid.parameters(), lr=config.lr)
        losses, step = [], 0
        while step < config.steps:
            for idx, images in iterate_batches(particles, config.batch_size):
                idx = torch.as_tensor(idx)
                pred = forward(grid, particles.rotations[idx], particles.shifts[idx], particles.ctf[idx],
                               particles.pixel_size)
                loss = ((pred - images) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if step == config.steps:
                    break
        return MethodOutputs(pixel_size=particles.pixel_size, volume=grid.render()[0],
                             metrics={"steps": step, "final_loss": losses[-1]},
                             history=[{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)])


    register(Recipe(name="sgd-voxel-test", fit=fit, config=SGDVoxelConfig, learned=True,
                    summary="voxel grid by SGD at known poses (test)", needs=frozenset({"poses", "ctf"}),
                    heterogeneity="homogeneous", reference="none (a test)"), replace=True)
''')


@pytest.fixture
def new_recipe(tmp_path):
    """The module written to a temporary file and imported (it registers itself); unregistered after."""
    path = tmp_path / "sgd_voxel_recipe.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location("sgd_voxel_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        unregister(NAME)
        sys.modules.pop("sgd_voxel_recipe", None)


def test_new_recipe_is_listed_runs_from_the_cli_and_reaches_the_leaderboard(new_recipe, bench_cache, tmp_path,
                                                                               capsys):
    """Listed with its summary; ``recipes NAME`` shows the generated option; ``train NAME ... --steps 4``
    writes a run folder with map.mrc whose metrics record 4 steps; the runner puts it on the
    leaderboard of the tiny suite's smallest known-pose task; after unregistering it is gone."""
    from cryolens.bench.leaderboard import write_leaderboard
    from cryolens.bench.runner import available_methods, run_suite
    from cryolens.bench.suite import ensure_dataset, load_tasks

    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert NAME in listing and "voxel grid by SGD at known poses (test)" in listing
    assert main(["recipes", NAME]) == 0
    assert "--steps" in capsys.readouterr().out

    task = next(t for t in load_tasks("tiny") if t.heterogeneity == "homogeneous" and t.known.poses)
    star = ensure_dataset(task, bench_cache) / "particles.star"
    run = tmp_path / "run"
    assert main(["train", NAME, str(star), "--out", str(run), "--steps", "4", "--batch-size", "40", "--quiet",
                 "--device", "cpu"]) == 0
    for name in ("map.mrc", "metrics.json", "config.json", "sections.png", "report.html"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4

    methods = available_methods([NAME])
    rows = run_suite([task], methods, tmp_path / "bench", budget_s=120, cache_dir=bench_cache,
                     overrides={NAME: {"steps": "3"}})
    assert [(r["method"], r["status"]) for r in rows] == [(NAME, "ok")]
    assert rows[0]["config"]["steps"] == 3
    write_leaderboard(tmp_path / "bench", "cryolens bench run --tasks tiny")
    assert f"| {NAME} |" in (tmp_path / "bench" / "leaderboard.md").read_text()
    assert (tmp_path / "bench" / "runs" / task.name / NAME / "map.mrc").is_file()
    unregister(NAME)
    assert NAME not in recipes()

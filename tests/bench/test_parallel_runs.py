"""Runs at a time (``run_suite(jobs=N)``, ``bench run --jobs``, a profile's ``jobs``): two runs of a
throw-away recipe that records when its ``fit`` ran overlap in time with two jobs and do not with one,
and every run is recorded once in ``results.json``; the hetero default profile sets the defaults."""

import json
import time
from argparse import Namespace
from pathlib import Path

import torch

from cryolens.bench.profiles import suite_wall_s
from cryolens.bench.runner import Method, run_suite
from cryolens.bench.suite import load_tasks
from cryolens.cli.bench import _profile_defaults
from cryolens.methods.registry import MethodOutputs, Recipe


def _timed_recipe(name: str, log: Path) -> Recipe:
    def fit(particles, known, run, config, device=None, progress=True):
        t0 = time.time()
        time.sleep(1.5)
        with open(log, "a") as fh:  # one short line per run: appends do not interleave
            fh.write(f"{name} {t0} {time.time()}\n")
        d = particles.box_size
        return MethodOutputs(pixel_size=particles.pixel_size, volume=torch.zeros(d, d, d))

    return Recipe(name=name, fit=fit, summary="sleeps, then a zero map", needs=frozenset({"poses", "ctf"}))


def _intervals(log: Path) -> list[tuple[float, float]]:
    return sorted((float(a), float(b)) for _, a, b in (line.split() for line in log.read_text().splitlines()))


def test_two_jobs_overlap_and_one_job_does_not(tmp_path, bench_cache):
    task = next(t for t in load_tasks("tiny") if t.name == "homogeneous-poses-snr1")
    for jobs in (1, 2):
        log = tmp_path / f"times{jobs}.txt"
        methods = {n: Method(n, _timed_recipe(n, log), "registry") for n in ("sleep-a", "sleep-b")}
        out = tmp_path / f"out{jobs}"
        rows = run_suite([task], methods, out, budget_s=120, cache_dir=bench_cache, halves=False,
                         snapshot_times_s=(), jobs=jobs)
        assert sorted(r["method"] for r in rows) == ["sleep-a", "sleep-b"]
        assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
        saved = json.loads((out / "results.json").read_text())["rows"]
        assert sorted(r["method"] for r in saved) == ["sleep-a", "sleep-b"]
        (s1, e1), (s2, e2) = _intervals(log)
        assert (s2 < e1) == (jobs == 2), (jobs, s1, e1, s2, e2)


def test_suite_wall_time_of_runs_on_slots():
    """Runs started in order on the first free slot: computed by hand."""
    assert suite_wall_s([5, 3, 2, 4], 1) == 14
    # A: 5; B: 3; the 2 goes to B (free at 3, ends at 5); the 4 to A (free at 5, first of the tie) → 9
    assert suite_wall_s([5, 3, 2, 4], 2) == 9
    assert suite_wall_s([1, 1, 1, 1], 4) == 1


def test_default_profile_sets_jobs_halves_and_score_times():
    """The hetero default profile's values become the CLI's defaults; what the user gives wins."""
    tasks = load_tasks("hetero", "default")
    args = Namespace(budget_s=None, memory_mb=None, jobs=None, no_halves=False, score_times=None)
    _profile_defaults(args, tasks)
    assert (args.budget_s, args.jobs, args.no_halves, args.score_times) == (600.0, 2, True, "60,300")
    mine = Namespace(budget_s=100.0, memory_mb=None, jobs=1, no_halves=False, score_times="")
    _profile_defaults(mine, load_tasks("tiny"))
    assert (mine.budget_s, mine.memory_mb, mine.jobs, mine.no_halves, mine.score_times) == (100.0, 6000.0, 1,
                                                                                          False, "")

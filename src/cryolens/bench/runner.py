"""The benchmark runner: every compatible method × task, each in its own process under a time and
memory budget, scored the same way.

A method is a registered recipe (:func:`cryolens.methods.registry.recipes`) or an outside-program
adapter (:mod:`cryolens.bench.adapters`); both have ``fit(particles, known, run, config, device,
progress) -> MethodOutputs``. A pair runs when ``recipe.accepts(task.known)`` and the recipe's
heterogeneity is one the task allows (``task.method_kinds``).

Each run is a forked child process (so recipes registered at run time, e.g. in a test, are
seen) in its own process group. The parent polls the wall time and the private resident memory of the
group and of every descendant (:mod:`cryolens.bench.supervise`: ``peak_mem_mb``), and kills them all
when the run exceeds ``budget_s`` or ``memory_mb``; the run is then recorded with status ``over_time`` /
``over_memory`` and the suite goes on. Before ``fit`` the child removes what the task does not give:
poses (rotations and shifts) unless ``known.poses``, the CTF unless ``known.ctf``, and every extra per-particle column.

Layout of ``out``::

    runs/<task>/<method>/   the recipe's run folder as the CLI writes it (the one writer,
                            :func:`cryolens.analysis.writer.write_run`: config.json, maps, particles.star,
                            plots), metrics.json with the scores, result.json, arrays.npz, report.html,
                            (error.txt on failure), whatever the recipe wrote (log.jsonl, ...),
                            timeline.json (score against wall time, :mod:`cryolens.bench.timeline`)
    results.json            every run's row (rewritten after each run)

A run whose ``result.json`` exists with status ``ok`` for the same task spec and config is not run
again (resume), unless ``rerun``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.files import atomic_write_text
from ..methods.registry import Recipe, recipes
from .suite import Task, ensure_dataset, model_path
from .withhold import strip_unknown
from .supervise import supervise
from .timeline import SNAPSHOT_TIMES_S, timeline_child

log = logging.getLogger(__name__)

#: the ground-truth map given as ``initial_model`` to recipes that take one, low-pass filtered to this (Å)
INITIAL_LOWPASS_A = 30.0


@dataclass
class Method:
    """A method the runner can run: a recipe and where it comes from (``registry`` / ``adapter``)."""

    name: str
    recipe: Recipe
    origin: str


def available_methods(names: list[str] | None = None, include_adapters: bool = True) -> dict[str, Method]:
    """Registered recipes and adapters by name; ``names`` selects (an unknown name is a KeyError
    listing the known ones; ``all`` selects every one)."""
    from .adapters import adapters

    pool = {n: Method(n, r, "registry") for n, r in recipes().items()}
    if include_adapters:
        pool.update({n: Method(n, r, "adapter") for n, r in adapters().items()})
    if not names or names == ["all"]:
        return pool
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise KeyError(f"unknown methods {unknown} (available: {', '.join(sorted(pool))})")
    return {n: pool[n] for n in names}


def compatible(recipe: Recipe, task: Task) -> bool:
    """The recipe gets what it needs from the task and models a heterogeneity the task allows (or
    is named in the task's ``consensus_methods``: a homogeneous baseline on a heterogeneous task,
    scored against the population-weighted mean map). A recipe that estimates poses itself runs
    only where the poses are withheld, unless the task sets ``pose_estimators_on_known_poses``
    (it would ignore the poses it is given, and costs the most)."""
    if task.known.poses and "poses" not in recipe.needs and not task.options.get("pose_estimators_on_known_poses"):
        return False
    return recipe.accepts(task.known) and (recipe.heterogeneity in task.method_kinds or
                                           recipe.name in (task.options.get("consensus_methods") or []))


def initial_model(dataset_dir: Path, lowpass_a: float = INITIAL_LOWPASS_A) -> Path:
    """``initial_model_<A>A.mrc`` beside the dataset: the (population-weighted mean) ground truth
    low-pass filtered to ``lowpass_a`` Å (soft edge), written once."""
    from ..imaging.grids import lowpass_volume
    from ..io.mrc import write_volume
    from .scoring import Truth

    out = dataset_dir / f"initial_model_{lowpass_a:g}A.mrc"
    if out.is_file():
        return out
    truth = Truth(dataset_dir)
    d = truth.volumes.shape[-1]
    # a soft edge 0.02 cycles/px wide
    vol = lowpass_volume(truth.consensus.float(), lowpass_a, truth.pixel_size, width_shells=0.02 * d)
    write_volume(out, vol.numpy(), truth.pixel_size)
    return out


INITIAL_MODEL_KEYS = ("initial_model", "init_map")


def check_method_config(tasks: list[Task], methods: dict[str, Method]) -> None:
    """Refuse a suite whose ``method_config`` names an option a selected method does not have
    (InputError naming the suite file, the method and the option): a typo or a renamed option would
    otherwise run the whole suite with the default. Methods the suite configures but that are not
    selected or not available (a peer not installed) are not checked."""
    for task in tasks:
        for name, opts in (task.options.get("method_config") or {}).items():
            if name not in methods:
                continue
            unknown = sorted(set(opts or {}) - set(methods[name].recipe.defaults))
            if unknown:
                hint = {k: difflib.get_close_matches(k, methods[name].recipe.defaults, 1) for k in unknown}
                near = "; ".join(f"{k}: did you mean {v[0]}?" for k, v in hint.items() if v)
                raise InputError(f"{task.source or task.name}: method_config.{name}: no option(s) "
                                 f"{', '.join(unknown)}" + (f" ({near})" if near else "")
                                 + f"; see `cryolens recipes {name}`")


def _config_for(method: Method, task: Task, dataset_dir: Path, overrides: dict):
    """The recipe's defaults updated with the task file's ``method_config`` and the caller's
    overrides (both checked by :func:`check_method_config` before a suite starts: every option named
    must exist).
    Methods listed in the task's ``initial_model.methods`` get the ground truth low-pass filtered
    to ``initial_model.lowpass_A`` as their ``initial_model`` / ``init_map`` when that is empty; methods
    listed in ``atomic_model.methods`` get the task's atomic model (its state 0) as their ``model``.
    Everything goes through the recipe's :meth:`~cryolens.methods.registry.Recipe.config` (typed,
    coerced; an unknown or mistyped option of the caller's is an InputError naming the recipe)."""
    rec = method.recipe
    over = dict(task.options.get("method_config", {}).get(method.name, {}) or {})
    over.update({k: v for k, v in (overrides.get(method.name, {}) or {}).items()})
    over.update({k: v for k, v in (overrides.get("*", {}) or {}).items() if k in rec.defaults})
    init = task.options.get("initial_model", {}) or {}
    wants = method.name in (init.get("methods") or []) or "initial_model" in rec.defaults
    for key in INITIAL_MODEL_KEYS:
        if wants and key in rec.defaults and not over.get(key, rec.defaults[key]):
            over[key] = str(initial_model(dataset_dir, float(init.get("lowpass_A", INITIAL_LOWPASS_A))))
    if method.name in ((task.options.get("atomic_model") or {}).get("methods") or []) and \
            "model" in rec.defaults and not over.get("model", rec.defaults["model"]):
        over["model"] = str(model_path(task.dataset))  # the base model of a method built on one
    return rec.config(over)


def config_json(config) -> dict:
    """A recipe config (typed, or a plain dict) as JSON-ready ``{option: value}``."""
    from ..methods.config import as_dict

    return _json(dict(config) if isinstance(config, dict) else as_dict(config))


def _json(x):
    from ..io.runfolder import _jsonable

    return _jsonable(x)


def _run_child(method: Method, task: Task, dataset_dir: Path, run_dir: Path, config: dict, device: str | None,
               threads: int, halves: bool, snapshot_times_s: tuple = ()) -> None:
    """Body of the forked child: fit, score, write the run folder and ``result.json``."""
    os.setpgid(0, 0)
    import resource

    import torch

    from ..inference.snapshots import checkpoint_snapshots
    from ..io.runfolder import RunFolder
    from ..io.star import read_star
    from .outputs import write_run_outputs
    from .scoring import Truth, score
    from .timeline import resumable

    torch.set_num_threads(threads)
    run = RunFolder(run_dir)
    result: dict = {"task": task.name, "method": method.name, "origin": method.origin, "status": "failed"}
    try:
        run.write_config("bench run", {"task": task.as_dict(), "method": method.name, "config": config_json(config),
                                       "dataset": str(dataset_dir), "device": device, "threads": threads})
        full = read_star(dataset_dir / "particles.star")
        particles = strip_unknown(full, task.known)
        dev = torch.device(device) if device else torch.device("cpu")
        t0 = time.time()
        with checkpoint_snapshots(run.path("snapshots"), snapshot_times_s if resumable(method.recipe) else ()):
            outputs = method.recipe.fit(particles, task.known, run, config, dev, False)
        fit_s = time.time() - t0
        halves_latents = None
        if halves and outputs.latents is not None and "conformational_resolution" in task.scores:
            rng = np.random.default_rng(12345)
            order = rng.permutation(len(particles))
            lat = []
            for h, idx in enumerate((np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:]))):
                sub = RunFolder(run.path(f"half{h + 1}"))
                lat.append(np.asarray(method.recipe.fit(particles.subset(idx), task.known, sub, config, dev,
                                                        False).latents))
            halves_latents = (lat[0], lat[1])
        truth = Truth(dataset_dir)
        metrics, arrays = score(task, truth, outputs, task.known, device=dev, halves_latents=halves_latents)
        metrics.update({f"method_{k}": v for k, v in (outputs.metrics or {}).items()
                        if isinstance(v, (int, float, str, bool))})
        metrics["fit_s"] = fit_s
        metrics["total_s"] = time.time() - t0
        write_run_outputs(run, task, method.name, outputs, truth, metrics, arrays, particles, method.recipe)
        result["status"] = "ok"
        result["metrics"] = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    except Exception as e:  # recorded, never raised: the suite goes on
        result["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        atomic_write_text(run.path("error.txt"), traceback.format_exc())
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["child_max_rss_mb"] = usage / 1024
    atomic_write_text(run.path("result.json"), json.dumps(_json(result), indent=2) + "\n")


def run_one(method: Method, task: Task, dataset_dir: Path, run_dir: Path, config: dict, budget_s: float,
            memory_mb: float, device: str | None = None, threads: int = 1, halves: bool = True,
            snapshot_times_s: tuple = SNAPSHOT_TIMES_S) -> dict:
    """Run one method on one task in a forked child under the budget; returns its result row. A run
    that kept checkpoint snapshots (:mod:`cryolens.bench.timeline`) has them scored afterwards in a
    second child under the same budget (its time not counted in the run's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "error.txt", "timeline.json"):
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "snapshots", ignore_errors=True)
    status, wall, peak, exitcode = supervise(
        _run_child, (method, task, dataset_dir, run_dir, config, device, threads, halves, tuple(snapshot_times_s)),
        budget_s, memory_mb)
    res_path = run_dir / "result.json"
    if status is None and res_path.is_file():
        row = json.loads(res_path.read_text())
        if row.get("status") == "ok" and (run_dir / "snapshots" / "snapshots.json").is_file():
            st, row["timeline_wall_s"], _, _ = supervise(
                timeline_child, (method, task, dataset_dir, run_dir, config, device, threads), budget_s, memory_mb)
            row["timeline_status"] = st or ("ok" if (run_dir / "timeline.json").is_file() else "failed")
    else:
        row = {"task": task.name, "method": method.name, "origin": method.origin,
               "status": status or "crashed",
               "error": (f"killed after {wall:.0f} s (budget {budget_s:.0f} s)" if status == "over_time" else
                         f"killed at {peak:.0f} MB (budget {memory_mb:.0f} MB)" if status == "over_memory" else
                         f"the process ended with exit code {exitcode} and no result")}
    row.update(wall_s=wall, peak_mem_mb=peak, budget_s=budget_s,
               memory_mb=memory_mb, task_hash=task.dataset_hash(), config=config_json(config), snr=task.snr,
               heterogeneity=task.heterogeneity, generator=task.dataset["heterogeneity"].get("generator"),
               known={"poses": task.known.poses, "ctf": task.known.ctf},
               run_dir=str(run_dir), dataset_dir=str(dataset_dir), n_images=int(task.dataset["n_images"]),
               box=int(task.dataset["box"]), pixel_size=float(task.dataset["pixel_size"]))
    atomic_write_text(res_path, json.dumps(_json(row), indent=2) + "\n")
    from ..analysis.report import write_report

    write_report(run_dir, f"{method.name} on {task.name}: {row['status']}")  # every run folder has one
    return row


def _preload() -> None:
    """Import the scoring's heavy optional dependencies once here (POT, scikit-learn, pyplot): every run's
    forked process then finds them loaded instead of importing them again (seconds each)."""
    import importlib

    for name in ("ot", "sklearn.cluster", "matplotlib.pyplot"):
        try:
            importlib.import_module(name)
        except ImportError:  # optional: the run imports (or misses) it itself
            continue


def run_suite(tasks: list[Task], methods: dict[str, Method], out: str | os.PathLike, budget_s: float = 600,
              memory_mb: float = 6000, cache_dir: str | os.PathLike | None = None, device: str | None = None,
              threads: int = 1, overrides: dict | None = None, rerun: bool = False, halves: bool = True,
              on_row: Callable[[dict], None] | None = None, snapshot_times_s: tuple = SNAPSHOT_TIMES_S,
              jobs: int = 1) -> list[dict]:
    """Run every compatible method × task (module docstring); returns all result rows (also in
    ``out/results.json``). ``overrides``: ``{method: {option: value}}``, ``"*"`` for every recipe
    that has the option. ``snapshot_times_s``: when learned runs keep checkpoints to score against time.
    ``jobs``: runs at a time, each its own supervised process of ``threads`` threads (every task's dataset
    is made before the first run starts). Rows are in the order the runs finish."""
    check_method_config(tasks, methods)
    _preload()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    lock = threading.Lock()
    t_suite = time.time()

    def record(row: dict) -> None:
        with lock:
            rows.append(row)
            if on_row and not row.get("resumed"):
                on_row(row)
            atomic_write_text(out / "results.json", json.dumps(_json(
                {"rows": rows, "suite_wall_s": time.time() - t_suite}), indent=2) + "\n")

    todo = []
    # tasks with known poses first: they are the cheap ones, so a suite cut short still has them
    for task in sorted(tasks, key=lambda t: not t.known.poses):
        pairs = [m for m in methods.values() if compatible(m.recipe, task)]
        if not pairs:
            continue
        dataset_dir = ensure_dataset(task, cache_dir, device=None)
        for method in pairs:
            run_dir = out / "runs" / task.name / method.name
            config = _config_for(method, task, dataset_dir, overrides or {})
            old = None if rerun else _finished(run_dir, task, config)
            if old is not None:
                record(old)
            else:
                todo.append((method, task, dataset_dir, run_dir, config, budget_s, memory_mb, device, threads,
                             halves, snapshot_times_s))
    if jobs <= 1:
        for args in todo:
            record(run_one(*args))
    else:  # every dataset exists before the first fork: the forking threads never race the generator
        with ThreadPoolExecutor(max_workers=int(jobs), thread_name_prefix="bench-run") as pool:
            for fut in [pool.submit(lambda a=a: record(run_one(*a))) for a in todo]:
                fut.result()
    atomic_write_text(out / "results.json", json.dumps(_json({"rows": rows, "suite_wall_s": time.time() - t_suite}),
                                                       indent=2) + "\n")
    return rows


def _finished(run_dir: Path, task: Task, config) -> dict | None:
    """The row of a run already finished (status ``ok``) for the same task spec and config, else None."""
    prev = run_dir / "result.json"
    if not prev.is_file():
        return None
    old = json.loads(prev.read_text())
    if old.get("status") == "ok" and old.get("task_hash") == task.dataset_hash() and \
            old.get("config") == config_json(config):
        old["resumed"] = True
        return old
    return None

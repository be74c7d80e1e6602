"""Score against wall time: a benchmark run's headline score at the times it had reached.

While a recipe trained on the one engine runs in the benchmark (:mod:`cryolens.bench.runner`), the engine
keeps a copy of its checkpoint at the first epoch end after each of :data:`SNAPSHOT_TIMES_S` seconds
(:func:`cryolens.inference.snapshots.checkpoint_snapshots`). After the run, each copy is scored by the
same code as the final outputs (:func:`cryolens.bench.scoring.score`; without the scores of
:data:`SNAPSHOT_SKIPS`, which decode many maps and are not plotted against time): the recipe's ``fit`` is called
again in a scratch folder holding that checkpoint (and the training log), with ``resume`` on and
``epochs`` set to the epochs it had completed — nothing left to train, so ``fit`` only finishes (latents,
maps) from the weights of that time. ``timeline.json`` in the run folder lists the points
``{elapsed_s, epoch, step, metrics}`` (wall seconds since ``fit`` started), the last being the final
outputs at ``fit_s``. The cryoDRGN peer (:mod:`cryolens.bench.adapters`) writes the same list for the
weights cryoDRGN saves every ``checkpoint_every`` epochs (``epoch`` there is cryoDRGN's own epoch number,
that of its ``weights.E.pkl``, at the time of its log line ending that epoch), finished by its
``fit.finish_snapshot``. A method with neither (back-projection, the EM recipes, RELION, RECOVAR — one
embedding at the end of its pipeline) has its final point only.

:func:`ahead_at` says which method leads a task at given times (the leaderboard uses 1, 5 and 20 min):
each method's score at ``T`` is that of its latest point at or before ``T``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import numpy as np

from ..io.files import atomic_write_text
from ..io.runfolder import RunFolder

#: wall-clock seconds after which the engine keeps a checkpoint for scoring (1, 5 and 20 min)
SNAPSHOT_TIMES_S = (60.0, 300.0, 1200.0)
#: the scores a snapshot is not given: the ones that decode many more maps or models than the headline's per-image
#: FSC-AUC (one map per conformation, the clustering's maps, per-image models, the half-data fits). A snapshot
#: point has the headline and the cheap scores; the final point has every score of the task.
SNAPSHOT_SKIPS = frozenset({"per_conformation_fsc", "conformational_clustering", "per_image_ca_rmsd",
                            "conformational_resolution"})


def resumable(recipe) -> bool:
    """Whether the recipe is trained on the engine and can be finished from a checkpoint: learned, with
    ``epochs`` and ``resume`` options."""
    return bool(recipe.learned) and {"epochs", "resume"} <= set(recipe.defaults)


def score_snapshots(method, task, particles, dataset_dir: Path, run_dir: Path, config, fit_s: float,
                    final_metrics: dict, device=None) -> list[dict]:
    """Score every snapshot of ``run_dir/snapshots`` (module docstring) and write ``run_dir/timeline.json``
    (the snapshot points, then the final one); returns the points. A snapshot whose scoring fails gets
    its ``error`` instead of metrics; engine checkpoint copies are removed once scored. A recipe whose
    ``fit`` has a ``finish_snapshot(particles, known, run_dir, config, record, device)`` (an outside
    program that saves its own per-epoch state, e.g. the cryoDRGN peer) is finished by it instead of
    by resuming the engine."""
    from ..inference.snapshots import read_snapshots
    from .scoring import Truth, score

    snap_dir = run_dir / "snapshots"
    task = dataclasses.replace(task, scores=[s for s in task.scores if s not in SNAPSHOT_SKIPS])
    finish = getattr(method.recipe.fit, "finish_snapshot", None) or functools.partial(_resume, method.recipe.fit)
    points = []
    truth = None
    for rec in read_snapshots(snap_dir):
        point = {"elapsed_s": rec["elapsed_s"], "epoch": rec["epoch"], "step": rec["step"]}
        try:
            outputs = finish(particles, task.known, run_dir, config, rec, device)
            truth = truth or Truth(dataset_dir)
            metrics, _ = score(task, truth, outputs, task.known, device=device)
            point["metrics"] = _scalars(metrics)
        except Exception as e:  # recorded: the final result stands without this point
            point["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        finally:  # an engine snapshot and its scratch folder (nothing for a peer's own files)
            shutil.rmtree(_scratch(run_dir, rec), ignore_errors=True)
            (snap_dir / rec["file"]).unlink(missing_ok=True)
        points.append(point)
    points.append({"elapsed_s": float(fit_s), "final": True, "metrics": _scalars(final_metrics)})
    atomic_write_text(run_dir / "timeline.json", json.dumps(points, indent=1, default=float) + "\n")
    return points


def _scratch(run_dir: Path, record: dict) -> Path:
    return run_dir / "snapshots" / f"eval_{record['file'].removesuffix('.pt')}"


def _resume(fit, particles, known, run_dir: Path, config, record: dict, device=None):
    """A recipe trained on the engine, finished from the snapshot ``record``: its ``fit`` in a scratch
    folder holding the snapshot as ``checkpoint.pt`` (and the run's log), ``resume`` on, ``epochs`` = the
    epochs it had completed (module docstring)."""
    scratch = _scratch(run_dir, record)
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "snapshots" / record["file"], scratch / "checkpoint.pt")
    if (run_dir / "log.jsonl").is_file():
        shutil.copyfile(run_dir / "log.jsonl", scratch / "log.jsonl")
    cfg = dataclasses.replace(config, resume=True, epochs=int(record["epoch"]))
    return fit(particles, known, RunFolder(scratch), cfg, device, False)


def timeline_child(method, task, dataset_dir: Path, run_dir: Path, config, device: str | None, threads: int
                   ) -> None:
    """Body of the runner's second child after a finished run (own budget): :func:`score_snapshots` with
    the particles the recipe was given and the final metrics of ``result.json``."""
    import os

    import torch

    from ..io.star import read_star
    from .withhold import strip_unknown

    os.setpgid(0, 0)
    torch.set_num_threads(threads)
    metrics = json.loads((run_dir / "result.json").read_text()).get("metrics", {})
    particles = strip_unknown(read_star(dataset_dir / "particles.star"), task.known)
    dev = torch.device(device) if device else torch.device("cpu")
    score_snapshots(method, task, particles, dataset_dir, run_dir, config, float(metrics.get("fit_s", 0.0)),
                    metrics, dev)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def series(row: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(elapsed s, score)`` of one result row for metric ``key``, time-ordered: the points of its
    ``timeline.json`` that have it, else the final value at ``fit_s`` (empty when it has neither)."""
    path = Path(row.get("run_dir", "")) / "timeline.json"
    pts = json.loads(path.read_text()) if row.get("run_dir") and path.is_file() else []
    xy = [(float(p["elapsed_s"]), float(p["metrics"][key])) for p in pts if key in p.get("metrics", {})]
    if not xy:
        m = row.get("metrics", {})
        if key in m and isinstance(m[key], (int, float)):
            xy = [(float(m.get("fit_s", row.get("wall_s", 0.0))), float(m[key]))]
    xy.sort()
    return np.asarray([a for a, _ in xy], dtype=float), np.asarray([b for _, b in xy], dtype=float)


def value_at(t: np.ndarray, v: np.ndarray, time_s: float) -> float | None:
    """The score of the latest point at or before ``time_s`` (None when the first point is later)."""
    i = int(np.searchsorted(t, time_s, side="right")) - 1
    return None if i < 0 else float(v[i])


def ahead_at(curves: dict[str, tuple[np.ndarray, np.ndarray]], times_s, higher_is_better: bool = True
             ) -> list[tuple[str, float] | None]:
    """For each of ``times_s``: ``(method, score)`` of the method leading at that time (its latest point at
    or before it, :func:`value_at`), or None when no method has a point yet. NaN scores never lead."""
    out = []
    for t in times_s:
        vals = [(m, value_at(x, y, t)) for m, (x, y) in sorted(curves.items())]
        vals = [(m, v) for m, v in vals if v is not None and np.isfinite(v)]
        out.append(None if not vals else (max if higher_is_better else min)(vals, key=lambda mv: mv[1]))
    return out

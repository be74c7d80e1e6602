"""Copies of the training engine's checkpoints at wall-clock times, for scoring a run against time.

:func:`checkpoint_snapshots` is entered around a recipe's ``fit`` (the benchmark runner does so in the
run's own process); while it is active, :meth:`cryolens.inference.engine.Trainer.save` calls
:func:`take_snapshot` after writing ``checkpoint.pt``. A snapshot is a whole engine checkpoint, so the
recipe can be resumed from it with ``epochs`` set to the snapshot's epoch (nothing more to train) to give
its outputs at that time (:mod:`cryolens.bench.timeline`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


class _Plan:
    """Where and when to keep copies: ``folder``, the times not yet reached (s), the start, the copies."""

    def __init__(self, folder: Path, times_s: Sequence[float]):
        self.folder, self.times = folder, sorted(float(t) for t in times_s)
        self.t0 = time.time()
        self.taken: list[dict] = []


_ACTIVE: list[_Plan] = []


@contextlib.contextmanager
def checkpoint_snapshots(folder: str | Path, times_s: Sequence[float]) -> Iterator[list[dict]]:
    """While active, the first checkpoint the engine saves at or after each of ``times_s`` (wall-clock
    seconds since entering) is also copied to ``folder/snapshot_<k>.pt``; ``folder/snapshots.json``
    lists ``{file, elapsed_s, epoch, step}`` of each copy (epochs completed, optimiser steps). Several
    times passed by one checkpoint give one copy. Yields that list (filled as training goes)."""
    plan = _Plan(Path(folder), times_s)
    _ACTIVE.append(plan)
    try:
        yield plan.taken
    finally:
        _ACTIVE.remove(plan)


def take_snapshot(checkpoint: Path, epoch: int, step: int) -> None:
    """Copy the checkpoint just written (after ``epoch`` epochs, ``step`` steps) for every active plan
    whose next time has passed."""
    for plan in _ACTIVE:
        elapsed = time.time() - plan.t0
        if not plan.times or plan.times[0] > elapsed:
            continue
        plan.times = [t for t in plan.times if t > elapsed]
        plan.folder.mkdir(parents=True, exist_ok=True)
        name = f"snapshot_{len(plan.taken):03d}.pt"
        shutil.copyfile(checkpoint, plan.folder / name)
        plan.taken.append({"file": name, "elapsed_s": elapsed, "epoch": int(epoch), "step": int(step)})
        (plan.folder / "snapshots.json").write_text(json.dumps(plan.taken, indent=1) + "\n")


def read_snapshots(folder: str | Path) -> list[dict]:
    """The records of ``folder/snapshots.json`` (``[]`` when there is none)."""
    p = Path(folder) / "snapshots.json"
    return json.loads(p.read_text()) if p.is_file() else []

"""What a benchmark profile will cost before it runs: sizes, estimated time and memory per run.

``cryolens bench run --profile NAME --dry-run`` prints, for every (task, method) run, the dataset size
and an *estimate* of its wall time and peak memory, and refuses with one line when a run needs more
memory than the machine has. Nothing is simulated or run.

The estimates are scalings of measurements, not measurements:

- time: the run's wall time in the default suite's leaderboard (``benchmarks/LEADERBOARD.md``,
  2026-12-05: D = 32, 1,000 images, one thread, the default suite's options, :data:`MEASURED`), times
  ``N / 1000 × (D / 32)²`` (work per image grows with its pixels) times the ratio of the run's
  epochs / iterations to the measured run's where both name them; a method without a measurement is
  given the run's budget (the runner stops it there), and each estimate is capped at the budget.
- memory: the larger of the measured peak scaled as ``150 MB + (peak − 150 MB)·(D/32)²`` and a model
  of what every run holds: 400 MB of program, the ground truth three times (the maps, their mean, the
  copies scoring makes: ``3·K·D³·4`` bytes) and eight padded Fourier grids (``8·(2D)³·8`` bytes). The
  particle stack is memory-mapped and streamed (not counted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from .suite import Task

#: (wall s, peak MB) of each method in the default suite's leaderboard (D = 32, 1,000 images, SNR 0.1;
#: the continuous task, with its two half-data fits, where a method ran on one; benchmarks/LEADERBOARD.md)
MEASURED = {"backprojection": (1.14, 292), "relion-reconstruct": (1.74, 223), "cryodrgn": (44.5, 336),
            "cryodrgn-autodecoder": (45.8, 335), "cryodrgn-homo": (11.4, 255), "cryodrgn2": (27.7, 518),
            "cryoai": (33.2, 698), "cryoposenet": (15.4, 297), "cryosparc-abinit": (63.2, 588),
            "cryosparc-refine": (31.0, 252), "relion-autorefine": (59.3, 119), "relion-refine3d": (46.5, 389),
            "cryosparc-abinit-hetero": (72.0, 974), "relion-class3d": (64.8, 719)}
_LENGTH_KEYS = ("epochs", "n_iterations", "max_iterations")


@dataclass
class RunEstimate:
    """One run's estimate: ``time_s`` (capped at the budget), ``memory_mb``, ``measured`` (whether a
    measurement was scaled, else the budget stands in for the time)."""

    task: str
    method: str
    time_s: float
    memory_mb: float
    measured: bool


def dataset_gb(task: Task) -> float:
    """Size of the task's particle stack on disk, GB (float32 images)."""
    d = int(task.dataset["box"])
    return int(task.dataset["n_images"]) * d * d * 4 / 1e9


def n_states(task: Task) -> int:
    """The number of ground-truth maps the task's dataset has."""
    het = task.dataset.get("heterogeneity") or {}
    for key in ("compositions", "models"):
        if het.get(key):
            return len(het[key])
    return int(het.get("n_states", 1)) if het.get("kind", "homogeneous") != "homogeneous" else 1


def _length_ratio(method: str, task: Task, reference: dict) -> float:
    mine = (task.options.get("method_config") or {}).get(method) or {}
    ref = reference.get(method) or {}
    for key in _LENGTH_KEYS:
        if key in mine and key in ref and float(ref[key]) > 0:
            return float(mine[key]) / float(ref[key])
    return 1.0


def estimate(task: Task, method: str, budget_s: float, reference_config: dict | None = None) -> RunEstimate:
    """The time and memory estimate of ``method`` on ``task`` (module docstring); ``reference_config``:
    the method options the measurements were made with (default: the default suite's)."""
    if reference_config is None:
        from .suite import load_tasks

        reference_config = load_tasks("default")[0].options.get("method_config") or {}
    d, n = int(task.dataset["box"]), int(task.dataset["n_images"])
    grid = 400 + 3 * n_states(task) * d ** 3 * 4 / 2 ** 20 + 8 * (2 * d) ** 3 * 8 / 2 ** 20
    if method in MEASURED:
        wall, peak = MEASURED[method]
        t = wall * n / 1000 * (d / 32) ** 2 * _length_ratio(method, task, reference_config)
        return RunEstimate(task.name, method, min(t, budget_s), max(150 + (peak - 150) * (d / 32) ** 2, grid), True)
    return RunEstimate(task.name, method, budget_s, grid, False)


def available_memory_mb() -> float:
    """Memory this machine can give now, MB: ``MemAvailable`` of ``/proc/meminfo``, else the physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def check_memory(estimates: list[RunEstimate], available_mb: float, profile: str,
                 budget_mb: float | None = None) -> None:
    """Raise :class:`InputError` (one line) when the largest run needs more than the machine's
    ``available_mb``, or than the per-run memory budget ``budget_mb`` (the runner stops a run there)."""
    if not estimates:
        return
    worst = max(estimates, key=lambda e: e.memory_mb)
    need = f"{profile}: {worst.method} on {worst.task} needs about {worst.memory_mb / 1024:.1f} GB of memory (estimate)"
    if worst.memory_mb > available_mb:
        raise InputError(f"{need}, this machine has {available_mb / 1024:.1f} GB available")
    if budget_mb is not None and worst.memory_mb > budget_mb:
        raise InputError(f"{need}, over the budget of {budget_mb / 1024:.1f} GB per run (raise --memory-mb)")


def dry_run_table(tasks: list[Task], estimates: list[RunEstimate]) -> str:
    """The dry run's text: one line per task (sizes), one per run (estimate), and the total."""
    lines = []
    for t in tasks:
        ds = t.dataset
        lines.append(f"task {t.name}: N={ds['n_images']} D={ds['box']} {float(ds['pixel_size']):.3g} Å/px "
                     f"SNR={t.snr:g} states={n_states(t)} stack={dataset_gb(t):.2f} GB "
                     f"given={'poses+' if t.known.poses else ''}{'ctf' if t.known.ctf else ''}")
        for e in (e for e in estimates if e.task == t.name):
            how = "scaled from a measurement" if e.measured else "not measured: the budget"
            lines.append(f"  {e.method:<26} ~{e.time_s / 60:6.1f} min  ~{e.memory_mb / 1024:5.1f} GB  ({how})")
    total = sum(e.time_s for e in estimates)
    lines.append(f"{len(estimates)} runs: ~{total / 60:.0f} min in all, one at a time on one CPU thread (an estimate: "
                 f"{sum(e.measured for e in estimates)} scaled from measurements, the rest at their budget); "
                 f"largest run ~{max((e.memory_mb for e in estimates), default=0) / 1024:.1f} GB")
    return "\n".join(lines)

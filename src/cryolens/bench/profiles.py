"""What a benchmark profile will cost before it runs: sizes, estimated time and memory per run.

``cryolens bench run --profile NAME --dry-run`` prints, for every (task, method) run, the dataset size
and an *estimate* of its wall time and peak memory, and refuses with one line when a run needs more
memory than the machine has. Nothing is simulated or run.

The estimates are scalings of measurements, not measurements:

- time: a measured wall time of the method (:data:`MEASURED_D64`: at D = 64 in a clean pass of the hetero
  default profile, where one was taken; else :data:`MEASURED`: at D = 32 in the default suite's leaderboard,
  ``benchmarks/LEADERBOARD_default_suite.md``, 2026-12-05), scaled by ``N / N_ref × (D / D_ref)²`` (work per image grows
  with its pixels) and by the ratio of the run's epochs / iterations to the measured run's where both name
  them. Going from D = 32 to 64 took longer than ``(D/32)²`` says, so a D = 32 measurement used at a larger
  D is also multiplied by :data:`D32_CORRECTION`, the mean ratio on the methods timed at both sizes. A
  method without a measurement is given the run's budget (the runner stops it there); each estimate is
  capped at the budget.
- memory: the larger of the measured peak scaled as ``150 MB + (peak − 150 MB)·(D/D_ref)²`` and a model
  of what every run holds: 400 MB of program, 1.6 GB for scoring (per-image FSCs of up to 256 MB of maps at
  a time, transformed in float64), the ground truth three times (``3·K·D³·4`` bytes) and eight padded
  Fourier grids (``8·(2D)³·8`` bytes). The particle stack is memory-mapped and streamed (not counted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from .suite import Task

#: (wall s, peak MB) of each method in the default suite's leaderboard (D = 32, 1,000 images, SNR 0.1;
#: the continuous task, with its two half-data fits, where a method ran on one; benchmarks/LEADERBOARD_default_suite.md)
MEASURED = {"backprojection": (1.14, 292), "relion-reconstruct": (1.74, 223), "cryodrgn": (44.5, 336),
            "cryodrgn-autodecoder": (45.8, 335), "cryodrgn-homo": (11.4, 255), "cryodrgn2": (27.7, 518),
            "cryoai": (33.2, 698), "cryoposenet": (15.4, 297), "cryosparc-abinit": (63.2, 588),
            "cryosparc-refine": (31.0, 252), "relion-autorefine": (59.3, 119), "relion-refine3d": (46.5, 389),
            "cryosparc-abinit-hetero": (72.0, 974), "relion-class3d": (64.8, 719)}
#: (wall s, peak MB, options) measured at D = 64 in one clean pass of the hetero default profile (500 images, SNR
#: 0.1, two runs at a time of one thread on the 2-core machine, no half-data fits; benchmarks/LEADERBOARD.md,
#: 2026-12-06 evening, 42.5 min for the 45 runs): the ANM task's run, the no-pose assembly's for the methods that need
#: no poses, and for multibody the mean over its four tasks (the assembly's nine chains take 5x a one-chain task's
#: time); stored per 1,000 images (twice the 500-image wall). RECOVAR's and RELION's times are mostly start-up (JAX
#: compilation, program start), so they do not really scale with N. e2gmm: its ANM run of 2026-12-07 (the mixture
#: sized from the map, ~1,500 Gaussians fitted in 400 steps: a fixed cost), measured beside a third job.
MEASURED_D64 = {m: (2 * wall, peak, opts) for m, (wall, peak, opts) in {
    "backprojection": (3.7, 762, {}), "relion-reconstruct": (10.1, 904, {}),
    "cryodrgn": (68.6, 1252, {"epochs": 2}), "cryodrgn-autodecoder": (71.0, 915, {"epochs": 2}),
    "cryodrgn-4.3": (217.2, 1007, {"epochs": 2}), "recovar": (287.9, 3830, {}),
    "3dflex": (145.8, 1693, {"epochs": 1}), "e2gmm": (343.4, 1351, {"epochs": 10}),
    "cryofold": (27.5, 1350, {"epochs": 20}), "multibody": (91.3, 1767, {"epochs": 30}),
    "atomvae": (71.9, 1032, {"epochs": 4}), "multi-cryogan": (235.5, 2856, {"epochs": 3}),
    "cryovaegan": (48.1, 448, {"epochs": 4}), "relion-class3d": (114.2, 763, {"n_iterations": 2}),
    "cryosparc-abinit-hetero": (53.0, 1446, {"n_iterations": 10})}.items()}
#: how much longer than (D/32)² the D = 32 → 64 step took: the mean ratio on the methods timed at both sizes
_BOTH = [m for m in MEASURED_D64 if m in MEASURED]
D32_CORRECTION = round(sum(MEASURED_D64[m][0] / (MEASURED[m][0] * 4) for m in _BOTH) / len(_BOTH), 1)
_LENGTH_KEYS = ("epochs", "n_iterations", "max_iterations")


@dataclass
class RunEstimate:
    """One run's estimate: ``time_s`` (capped at the budget), ``memory_mb``, ``measured`` (whether a
    measurement was scaled, else the budget stands in for the time), ``over_budget``."""

    task: str
    method: str
    time_s: float
    memory_mb: float
    measured: bool
    over_budget: bool = False  # the uncapped estimate is over the budget: the runner would stop the run


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
    grid = 2000 + 3 * n_states(task) * d ** 3 * 4 / 2 ** 20 + 8 * (2 * d) ** 3 * 8 / 2 ** 20
    if method in MEASURED_D64 or method in MEASURED:
        d64 = method in MEASURED_D64
        wall, peak, options = MEASURED_D64[method] if d64 else (*MEASURED[method], reference_config.get(method, {}))
        d_ref = 64 if d64 else 32
        t = wall * n / 1000 * (d / d_ref) ** 2 * _length_ratio(method, task, {method: options})
        t *= D32_CORRECTION if not d64 and d > 32 else 1.0
        mem = max(150 + (peak - 150) * (d / d_ref) ** 2, grid)
        return RunEstimate(task.name, method, min(t, budget_s), mem, True, t > budget_s)
    return RunEstimate(task.name, method, budget_s, grid, False)


def available_memory_mb() -> float:
    """Memory this machine can give now, MB: ``MemAvailable`` of ``/proc/meminfo``, else the physical memory."""
    from ..memory import available_bytes

    free = available_bytes()  # Linux; elsewhere the physical memory is the bound
    return free / 2 ** 20 if free is not None else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


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


def dry_run_table(tasks: list[Task], estimates: list[RunEstimate], jobs: int = 1) -> str:
    """The dry run's text: one line per task (sizes), one per run (estimate), and the total; with ``jobs``
    runs at a time, also the wall time of the whole suite, the runs started in order on the first free slot."""
    lines = []
    for t in tasks:
        ds = t.dataset
        lines.append(f"task {t.name}: N={ds['n_images']} D={ds['box']} {float(ds['pixel_size']):.3g} Å/px "
                     f"SNR={t.snr:g} states={n_states(t)} stack={dataset_gb(t):.2f} GB "
                     f"given={'poses+' if t.known.poses else ''}{'ctf' if t.known.ctf else ''}")
        for e in (e for e in estimates if e.task == t.name):
            how = "not measured: the budget" if not e.measured else \
                "scaled from a measurement; over the budget, would be stopped" if e.over_budget else \
                "scaled from a measurement"
            lines.append(f"  {e.method:<26} ~{e.time_s / 60:6.1f} min  ~{e.memory_mb / 1024:5.1f} GB  ({how})")
    total = sum(e.time_s for e in estimates)
    measured = sum(e.time_s for e in estimates if e.measured)
    lines.append(f"{len(estimates)} runs: ~{total / 60:.0f} min in all, one at a time on one CPU thread (an estimate: "
                 f"{sum(e.measured for e in estimates)} runs scaled from measurements, ~{measured / 60:.0f} min, "
                 f"{sum(e.over_budget for e in estimates)} of them over the budget; the rest counted at their "
                 f"budget); largest run ~{max((e.memory_mb for e in estimates), default=0) / 1024:.1f} GB")
    if jobs > 1 and estimates:
        wall = suite_wall_s([e.time_s for e in estimates], jobs)
        lines.append(f"{jobs} runs at a time, in the runner's order: ~{wall / 60:.0f} min "
                     f"for the suite, memory up to ~{jobs * max(e.memory_mb for e in estimates) / 1024:.1f} GB")
    return "\n".join(lines)


def suite_wall_s(times_s: list[float], jobs: int) -> float:
    """Wall time of runs of ``times_s`` seconds on ``jobs`` slots, each run started, in the given order,
    on the first slot to come free (the runner's order)."""
    slots = [0.0] * max(1, int(jobs))
    for t in times_s:
        i = min(range(len(slots)), key=slots.__getitem__)
        slots[i] += t
    return max(slots)

"""A benchmark run's process, supervised: forked, its wall time and private memory polled, and the run
with every process it started killed when it goes over its budget (:mod:`cryolens.bench.runner`).

The parent polls the wall time every 0.5 s and, every :data:`MEMORY_POLL_S` s, the private resident memory
(``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``) of the child's process group and of
every descendant of either (``mpirun`` starts its ranks in process groups of their own): pages a forked
child still shares with the runner are the runner's, not the run's. Linux only (``/proc``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import time

#: seconds between two readings of a run's private memory: reading ``smaps_rollup`` walks the page tables
#: (~0.1 s for a 2 GB process), so reading it at every 0.5 s poll took 15 % of a core per running run
MEMORY_POLL_S = 2.0


def _process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, process group)}`` of every process (from ``/proc``)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[int(pid)] = (int(fields[1]), int(fields[2]))  # stat fields 4 (ppid) and 5 (pgrp)
        except (OSError, IndexError, ValueError):
            continue
    return out


def _run_processes(root: int) -> list[int]:
    """The run's processes: ``root``, its process group, and every descendant of either (``mpirun``
    starts its ranks in process groups of their own)."""
    table = _process_table()
    members = {p for p, (_, g) in table.items() if g == root} | ({root} if root in table else set())
    children: dict[int, list[int]] = {}
    for p, (pp, _) in table.items():
        children.setdefault(pp, []).append(p)
    stack = list(members)
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in members:
                members.add(c)
                stack.append(c)
    return sorted(members)


def _private_mb(pids: list[int]) -> float:
    """Private resident memory (MB: ``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``)
    of ``pids``. Pages a forked child still shares with the runner are not counted: they are the
    runner's, not the run's."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith(("Private_Clean:", "Private_Dirty:")):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total / 2 ** 20


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue  # already gone, or not ours to end


def supervise(target, args: tuple, budget_s: float, memory_mb: float) -> tuple[str | None, float, float, int | None]:
    """Run ``target(*args)`` in a forked child under the time and memory budget (module docstring);
    returns ``(status, wall s, peak MB, exit code)``, status None, ``over_time`` or ``over_memory``."""
    proc = mp.get_context("fork").Process(target=target, args=args, daemon=False)
    t0 = time.time()
    proc.start()
    peak, status, rss, measured = 0.0, None, 0.0, -math.inf
    while proc.is_alive():
        proc.join(0.5)
        pids = _run_processes(proc.pid)
        if time.time() - measured >= MEMORY_POLL_S:
            rss, measured = _private_mb(pids), time.time()
            peak = max(peak, rss)
        if time.time() - t0 > budget_s:
            status = "over_time"
        elif rss > memory_mb:
            status = "over_memory"
        if status:
            _kill(pids)
            proc.join()
            break
    _kill([p for p in _run_processes(proc.pid) if p != os.getpid()])  # nothing of the run outlives it
    return status, time.time() - t0, peak, proc.exitcode

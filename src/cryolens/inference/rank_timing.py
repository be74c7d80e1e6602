"""Per-rank timing of an EM schedule's iterations: where each rank spends an iteration's wall time.

Parts, seconds on this rank (``perf_counter`` around calls the iteration makes anyway; no extra
collective per batch):

- ``estep_s``: the E-step compute (pose search, insertion, noise sums) over this rank's images;
- ``mstep_s``: the M-step reconstructions this rank computes (:func:`~cryolens.inference.distributed.on_ranks`);
- ``write_s``: the files this rank writes (checkpoint on rank 0, per-iteration snapshots);
- ``collective_s``: waiting in collectives — all-reduce, broadcast, barrier, gather
  (:func:`~cryolens.inference.distributed.collective_seconds`), i.e. mostly idle until the other ranks
  arrive; subtracted from the part that made the call;
- ``wall_s``: the iteration's wall time on this rank; the rest (``wall_s`` minus the parts) is the
  schedule's own work (FSC, τ², the history record).

The ranks' parts are joined once per iteration by one asynchronous all-reduce (:class:`TimingJoin`,
:func:`~cryolens.inference.distributed.start_gather`) whose result is read during the next iteration, so
the join itself never waits. :func:`joined` gives the record kept in the iteration's history (the max over
the ranks and each rank's), :func:`totals` the sums over a run's iterations for its metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .distributed import collective_seconds, start_gather

PARTS = ("estep_s", "mstep_s", "write_s", "collective_s", "wall_s")


class RankTimer:
    """The parts (module docstring) of one iteration on this rank, from its creation on. device: the compute
    device; on a GPU each part ends by waiting for the GPU, so that its kernels count in it."""

    def __init__(self, device: torch.device | str | None = None):
        self._t0, self._c0 = time.perf_counter(), collective_seconds()
        self.parts = {"estep_s": 0.0, "mstep_s": 0.0, "write_s": 0.0}
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self._cuda = dev if dev.type == "cuda" else None

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the block's seconds into ``name`` (``estep_s``, ``mstep_s``, ``write_s``), less the time
        it spent in collectives (those count as ``collective_s``)."""
        t, c = time.perf_counter(), collective_seconds()
        try:
            yield
            if self._cuda is not None:
                torch.cuda.synchronize(self._cuda)
        finally:
            self.parts[name] += (time.perf_counter() - t) - (collective_seconds() - c)

    def seconds(self) -> torch.Tensor:
        """``(5,)`` float64 in the order of :data:`PARTS`, up to now."""
        return torch.tensor([self.parts["estep_s"], self.parts["mstep_s"], self.parts["write_s"],
                             collective_seconds() - self._c0, time.perf_counter() - self._t0], dtype=torch.float64)


class TimingJoin:
    """Joins one iteration's :class:`RankTimer` over the ranks at a time: :meth:`start` after the iteration
    (an asynchronous all-reduce), :meth:`finish` during the next iteration or after the last (then every
    rank has also finished the iteration, its writes included)."""

    def __init__(self):
        self._pending = None

    def start(self, timer: RankTimer) -> None:
        """Start joining ``timer``'s parts as they are now."""
        self._pending = start_gather(timer.seconds())

    def finish(self, history: list[dict], back: int = 1) -> None:
        """Put the joined parts of the started iteration, if any, as ``"timing"`` into ``history[-back]``."""
        if self._pending is not None:
            history[-back]["timing"] = joined(self._pending())
            self._pending = None


def joined(table: torch.Tensor) -> dict:
    """The history record of the ranks' parts ``table (world, 5)``: each part's max over the ranks
    (``"estep_s"`` …) and ``"per_rank"``: each part's list, in rank order."""
    out = {name: float(table[:, j].max()) for j, name in enumerate(PARTS)}
    out["per_rank"] = {name: [float(x) for x in table[:, j]] for j, name in enumerate(PARTS)}
    return out


def totals(history: list[dict]) -> dict:
    """Sums over the iterations of ``history`` that hold a ``"timing"`` record and ran on as many ranks as the
    last one (a resumed run may have changed their number): per part, the max over the ranks of their totals
    and ``"per_rank"``, each rank's total; ``{}`` when no iteration has a record."""
    rows = [torch.tensor([h["timing"]["per_rank"][p] for p in PARTS], dtype=torch.float64).T
            for h in history if "timing" in h]
    rows = [r for r in rows if rows and r.shape == rows[-1].shape]
    return joined(torch.stack(rows).sum(0)) if rows else {}

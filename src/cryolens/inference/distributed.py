"""Many processes with ``torch.distributed``: set-up from ``torchrun``'s environment, and the few
collectives the EM core and the training engine use.

``torchrun --nproc_per_node=K --no-python cryolens refine ...`` (or ``train``, ``classify``,
``abinit``; or a test spawning processes) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``; :func:`init_distributed` then joins the process group — NCCL when
the device is a GPU, gloo on the CPU. Learned recipes run DDP on each rank's share of every global
batch (``DistributedSampler``). The EM family is data-parallel as RELION's MPI version is: each rank
takes its contiguous share of the images (:func:`shard`; half-sets and classes are per image, so they do
not depend on the number of ranks), accumulates its Fourier sums and noise statistics, and one
all-reduce per iteration (:func:`all_reduce_sum`) joins them; per-image results are merged
(:func:`merge_rows`, :func:`gather_rows`) so that every rank holds the same state, and rank 0 writes.

A collective that fails (a rank died, or cannot be reached within ``CRYOLENS_DIST_TIMEOUT`` seconds,
default 600) raises :class:`DistributedError` with a one-line message instead of hanging. The seconds a
process spends in collectives (computing nothing, mostly waiting for the other ranks) are counted
(:func:`collective_seconds`), for the per-rank timing of :mod:`~cryolens.inference.rank_timing`.

Under NCCL the tensors stay on the GPU: an all-reduce works in place on a CUDA tensor, and
:func:`on_ranks` broadcasts its results as tensors from GPU to GPU (only their shape and dtype travel as a
pickled object); CPU tensors travel through the GPU. Under gloo CPU tensors are reduced in place and
:func:`on_ranks` broadcasts through the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..errors import DistributedError

TIMEOUT_ENV = "CRYOLENS_DIST_TIMEOUT"
log = logging.getLogger(__name__)
_WAITED = [0.0]  # seconds this process has spent in collectives


def collective_seconds() -> float:
    """Seconds this process has spent in collectives (all-reduce, broadcast, barrier) since it started; 0
    in one process, where every collective is a no-op."""
    return _WAITED[0]


@contextmanager
def _collective(what: str, wait: bool = True) -> Iterator[None]:
    """Time a collective into :func:`collective_seconds`; a failure becomes :class:`DistributedError`.
    Under NCCL, whose collectives return before the GPU has done them, ``wait`` waits for the GPU so that
    the time counted is the collective's."""
    t = time.perf_counter()
    try:
        yield
        if wait and dist.is_initialized() and dist.get_backend() == "nccl":
            torch.cuda.synchronize()
    except Exception as e:
        raise _fail(what, e) from None
    finally:
        _WAITED[0] += time.perf_counter() - t


def _fail(what: str, err: Exception) -> DistributedError:
    rank, n = world() if dist.is_initialized() else (os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1"))
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return DistributedError(f"rank {rank} of {n}: {what} failed — another process died or cannot be reached "
                            f"(timeout {timeout_s():.0f} s, {TIMEOUT_ENV}): {first}")


def timeout_s() -> float:
    """Seconds a rendezvous or collective waits for the other ranks (``CRYOLENS_DIST_TIMEOUT``, default 600)."""
    return float(os.environ.get(TIMEOUT_ENV, "600"))


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (the process that writes files)."""
    return world()[0] == 0


def init_distributed(device: torch.device | str | None = None) -> torch.device | None:
    """Join the process group described by ``torchrun``'s environment variables when
    ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on CUDA); returns this rank's device (``cuda:LOCAL_RANK``
    for GPUs) or ``device`` unchanged when not distributed."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device) if device is not None else None
    if n <= 1 or (dist.is_available() and dist.is_initialized()):
        return dev
    cuda = dev is not None and dev.type == "cuda"
    if cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()))
    except Exception as e:  # the rendezvous: MASTER_ADDR unreachable, ranks missing
        raise _fail("joining the process group", e) from None
    return dev


def snapshot_writer() -> bool:
    """True on the rank that writes the per-iteration snapshots of an EM schedule: rank 1 where it runs on
    rank 0's node (``torchrun`` numbers a node's ``LOCAL_WORLD_SIZE`` ranks from 0, so rank 1 shares rank
    0's file system when that is above 1), so that they are written while rank 0 writes the checkpoint;
    rank 0 otherwise (one process, one rank per node)."""
    rank, n = world()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(n)))
    return rank == (1 if n > 1 and local > 1 else 0)


def is_distributed() -> bool:
    """True when this process is one of several in an initialised process group."""
    return world()[1] > 1


def shard(indices: np.ndarray, group: int = 0, groups: int = 1) -> np.ndarray:
    """This rank's contiguous share of ``indices`` ``(n,)`` (all of them in one process): the ranks'
    shares, in rank order, are ``indices`` in order, sizes differing by at most one.

    groups: with ``groups > 1`` dividing the number of ranks, only the ranks ``r ≡ group (mod groups)``
    share ``indices`` and the others get none — e.g. each half-set on its own ranks, as RELION pairs its
    MPI workers with the half-sets, so that a rank prepares one half's reference, not both; when
    ``groups`` does not divide the number of ranks every rank takes a share."""
    rank, n = world()
    indices = np.asarray(indices)
    if n == 1:
        return indices
    if groups > 1 and n % groups == 0:
        return np.array_split(indices, n // groups)[rank // groups] if rank % groups == group else indices[:0]
    return np.array_split(indices, n)[rank]


def _collective_device(t: torch.Tensor) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place (every rank gets the sum); no-op in one process. Bool
    tensors are summed as integers (then any-true); CPU tensors travel through the GPU under NCCL."""
    if not is_distributed():
        return
    for t in tensors:
        dev = _collective_device(t)
        work = t.to(device=dev, dtype=torch.int64 if t.dtype == torch.bool else t.dtype).contiguous()  # t itself
        with _collective("an all-reduce"):
            dist.all_reduce(work)
        if work.data_ptr() != t.data_ptr():
            t.copy_(work.to(device=t.device, dtype=t.dtype) if t.dtype != torch.bool else work > 0)


def on_ranks(jobs: list, device: torch.device | str | None = None) -> list:
    """Run job ``j`` (a callable returning a tensor) on rank ``j mod world`` only, then give every rank
    every result on ``device`` (broadcast from the rank that made it: through the CPU under gloo, GPU to
    GPU under NCCL): work that every rank needs but one can do. In one process: ``[job() for job in jobs]``."""
    rank, n = world()
    if n == 1:
        return [job() for job in jobs]
    made = {j: job() for j, job in enumerate(jobs) if j % n == rank}  # ours first: no rank waits on another
    nccl = dist.get_backend() == "nccl"
    gpu = torch.device("cuda", torch.cuda.current_device()) if nccl else None
    out = []
    for j in range(len(jobs)):
        mine, src = made.get(j), j % n
        with _collective("a broadcast"):
            if nccl:  # shape and dtype as an object, the tensor itself from GPU to GPU
                meta = [None if mine is None else (tuple(mine.shape), mine.dtype)]
                dist.broadcast_object_list(meta, src=src)
                got = (mine.to(gpu).contiguous() if mine is not None
                       else torch.empty(meta[0][0], dtype=meta[0][1], device=gpu))
                dist.broadcast(got, src=src)
            else:
                box = [None if mine is None else mine.cpu()]
                dist.broadcast_object_list(box, src=src)
                got = box[0]
        out.append(mine if mine is not None else got.to(device or "cpu"))
    return out


def merge_rows(tensors: list[torch.Tensor], mine: torch.Tensor) -> None:
    """Per-item results ``(N, ...)`` of which each rank computed the rows ``mine`` ``(N,)`` bool (the
    ranks' rows disjoint, covering what changed): every rank's tensors get, in place, each row from the
    rank that owns it (rows no rank owns become 0). No-op in one process."""
    if not is_distributed():
        return
    for t in tensors:
        m = mine.to(t.device).reshape(-1, *([1] * (t.dim() - 1)))
        local = torch.where(m, t, torch.zeros_like(t))
        all_reduce_sum(local)
        t.copy_(local)


def gather_rows(index: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """The rows ``values (n_local, ...)`` each rank computed for items ``index (n_local,)`` joined into
    ``(n, ...)`` on every rank (each item owned by one rank). In one process: ``values`` in ``index`` order."""
    out = torch.zeros((n, *values.shape[1:]), dtype=values.dtype, device=values.device)
    out[index.to(values.device)] = values
    all_reduce_sum(out)
    return out


def start_gather(values: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start joining every rank's ``values`` ``(k,)`` into ``(world, k)`` float64 (row ``r``: rank ``r``'s)
    without waiting for it (an asynchronous all-reduce): returns a function that waits and gives the
    table on the CPU (its wait counted in :func:`collective_seconds`). In one process: ``values[None]``."""
    rank, n = world()
    if n == 1:
        table = values.detach().double().cpu()[None]
        return lambda: table
    dev = _collective_device(values)
    table = torch.zeros(n, values.numel(), dtype=torch.float64, device=dev)
    table[rank] = values.detach().to(device=dev, dtype=torch.float64).reshape(-1)
    with _collective("an all-reduce", wait=False):
        work = dist.all_reduce(table, async_op=True)

    def wait() -> torch.Tensor:
        with _collective("an all-reduce"):
            work.wait()
        return table.cpu()
    return wait


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        with _collective("a barrier"):
            dist.barrier()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (after rank-local changes, e.g. a pose search
    whose results live in buffers)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in list(module.parameters()) + list(module.buffers()):
        with _collective("a broadcast"):
            dist.broadcast(t.data, src)


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Copy ``src``'s values of ``tensors`` (in place) to every rank (no-op when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in tensors:
        with _collective("a broadcast"):
            dist.broadcast(t, src)


def finish_distributed() -> None:
    """Leave the process group (after a barrier) if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception as e:  # another rank failed: its error, not this one, is the one to report
            log.debug("leaving the process group without the final barrier: %s", e)
        dist.destroy_process_group()

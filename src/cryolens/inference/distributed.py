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
default 600) raises :class:`DistributedError` with a one-line message instead of hanging.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from ..errors import DistributedError

TIMEOUT_ENV = "CRYOLENS_DIST_TIMEOUT"
log = logging.getLogger(__name__)


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
        work = t.to(device=dev, dtype=torch.int64 if t.dtype == torch.bool else t.dtype)
        try:
            dist.all_reduce(work)
        except Exception as e:
            raise _fail("an all-reduce", e) from None
        if work.data_ptr() != t.data_ptr():
            t.copy_(work.to(device=t.device, dtype=t.dtype) if t.dtype != torch.bool else work > 0)


def on_ranks(jobs: list, device: torch.device | str | None = None) -> list:
    """Run job ``j`` (a callable returning a tensor) on rank ``j mod world`` only, then give every rank
    every result on ``device`` (broadcast from the rank that made it, through the CPU): work that every
    rank needs but one can do. In one process: ``[job() for job in jobs]``."""
    rank, n = world()
    if n == 1:
        return [job() for job in jobs]
    made = {j: job() for j, job in enumerate(jobs) if j % n == rank}  # ours first: no rank waits on another
    out = []
    for j in range(len(jobs)):
        box = [made[j].cpu() if j in made else None]
        try:
            dist.broadcast_object_list(box, src=j % n)
        except Exception as e:
            raise _fail("a broadcast", e) from None
        out.append(made[j] if j in made else box[0].to(device or "cpu"))
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


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception as e:
            raise _fail("a barrier", e) from None


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (after rank-local changes, e.g. a pose search
    whose results live in buffers)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Copy ``src``'s values of ``tensors`` (in place) to every rank (no-op when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for t in tensors:
        dist.broadcast(t, src)


def finish_distributed() -> None:
    """Leave the process group (after a barrier) if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception as e:  # another rank failed: its error, not this one, is the one to report
            log.debug("leaving the process group without the final barrier: %s", e)
        dist.destroy_process_group()

"""Multi-process training with PyTorch DDP: set-up from ``torchrun``'s environment, and small helpers.

``torchrun --nproc_per_node=K --no-python cryolens train ...`` (or a test spawning processes) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; :func:`init_distributed`
then joins the process group — NCCL when the device is a GPU, gloo on the CPU — and every rank runs
the same training engine on its share of each global batch (``DistributedSampler``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
    dist.init_process_group("nccl" if cuda else "gloo")
    return dev


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
        dist.barrier()
        dist.destroy_process_group()

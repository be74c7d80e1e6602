"""Batch and chunk sizes of the EM core chosen from the *free* memory of the compute device, not hard-coded.

A batch of ``B`` items (images of an E-step, rotations of a scoring chunk, pairs of an insertion) needs
about ``fixed + B · per_item`` bytes; :func:`fit_count` returns the largest ``B`` whose working set fits
``fraction`` (default :data:`FRACTION`) of the free memory — ``torch.cuda.mem_get_info`` on a GPU,
``MemAvailable`` of ``/proc/meminfo`` on the CPU — and never less than 1.

On the CPU the count is also capped at the value the EM core used before (``cap``: 64 images, 2048
pairs, :func:`~cryolens.inference.estep.default_rotation_chunk` rotations), so results on the CPU are
bit-identical to the fixed sizes unless memory is short; on a GPU the cap is ``gpu_cap`` (none by
default), so a large card takes large batches. Several ranks on one machine each see the same free
memory; on the CPU the cap keeps their sum small, on GPUs each rank has its own card.

The per-item models count reals of the compute dtype (``itemsize`` bytes each; a complex value is two):

- :func:`image_bytes` — one image of an E-step + insertion batch: ``(8 + 4·T)·D² + 3·P`` reals, ``P``
  the poses scored per image (rotations × ``T`` shifts of a pass): the image transform and CTF and the
  insertion's weighted products (≈ 8 per pixel); the image terms of the likelihood, one shifted copy of
  the image per shift, complex, with a temporary while they are built (4 per pixel and shift, an upper
  bound: only the pixels inside ``k_max`` are kept); and the image's row of the score table, its
  prior-added copy and its weights (3 per pose). The significant set kept per image (``S`` weights and
  labels, ``S ≤ max_significant``) is small beside these and not counted.
- :func:`rotation_bytes` — one rotation of a scoring chunk of ``B`` images and ``T`` shifts:
  ``4·D² + 3·B·T`` reals (its slice, complex, with a rendering temporary; its column of the table).
- :func:`pair_bytes` — one (image, rotation) pair of an insertion chunk: ``6·D²`` reals (the gathered
  ``C·Y'``, complex, its weighted copy, ``C²`` and its weighted copy).
"""

from __future__ import annotations

import torch

from ..memory import MEMINFO, available_bytes  # noqa: F401  (MEMINFO: where the CPU's figure is read)

FRACTION = 0.25


def free_memory_bytes(device: torch.device | str | None = None) -> int | None:
    """Free memory, bytes, of ``device`` (default CPU): ``torch.cuda.mem_get_info`` on CUDA,
    ``MemAvailable`` of ``/proc/meminfo`` on the CPU (:func:`cryolens.memory.available_bytes`; ``None``
    where the file is not there)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    return available_bytes()


def image_bytes(size: int, n_poses: int, itemsize: int = 4, n_shifts: int = 1) -> int:
    """Bytes per image of an E-step + insertion batch of ``size``-px images scoring ``n_poses`` poses
    each, ``n_shifts`` of them shifts (module docstring: ``itemsize · ((8 + 4·T)·D² + 3·P)``)."""
    return itemsize * ((8 + 4 * n_shifts) * size * size + 3 * n_poses)


def rotation_bytes(size: int, n_images: int, n_shifts: int, itemsize: int = 4) -> int:
    """Bytes per rotation of a scoring chunk (module docstring: ``itemsize · (4·D² + 3·B·T)``)."""
    return itemsize * (4 * size * size + 3 * n_images * n_shifts)


def pair_bytes(size: int, itemsize: int = 4) -> int:
    """Bytes per (image, rotation) pair of an insertion chunk (module docstring: ``itemsize · 6·D²``)."""
    return itemsize * 6 * size * size


def fit_count(device: torch.device | str | None, per_item: int, cap: int | None = None, *, fixed: int = 0,
              fraction: float = FRACTION, gpu_cap: int | None = None, free: int | None = None) -> int:
    """The largest count ``B ≥ 1`` with ``fixed + B · per_item ≤ fraction · free`` bytes, at most ``cap`` on
    the CPU and ``gpu_cap`` on a GPU (``None``: no cap). free: the free bytes (default
    :func:`free_memory_bytes` of ``device``; unknown: ``cap``, or 1 without one)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    limit = gpu_cap if dev.type == "cuda" else cap
    free = free_memory_bytes(dev) if free is None else free
    if free is None:
        return max(1, limit or 1)
    n = int((fraction * free - fixed) // max(1, per_item))
    if limit is not None:
        n = min(n, int(limit))
    return max(1, n)


def batch_size_for(device, size: int, n_poses: int, itemsize: int = 4, cap: int = 64, given: int | None = None,
                   n_images: int | None = None, n_shifts: int = 1) -> int:
    """Images per E-step batch: ``given`` when the user gave one, else :func:`fit_count` of
    :func:`image_bytes` (CPU cap ``cap``, today's default; at most ``n_images`` when given)."""
    if given is not None:
        return int(given)
    gpu_cap = max(1, n_images) if n_images is not None else None
    return fit_count(device, image_bytes(size, n_poses, itemsize, n_shifts), cap, gpu_cap=gpu_cap)


def pair_chunk_for(device, size: int, itemsize: int = 4, cap: int = 2048, given: int | None = None) -> int:
    """Pairs per insertion chunk: ``given``, else :func:`fit_count` of :func:`pair_bytes` (CPU cap ``cap``)."""
    if given is not None:
        return int(given)
    return fit_count(device, pair_bytes(size, itemsize), cap)


def rotation_chunk_for(device, size: int, n_images: int, n_shifts: int, cap: int, itemsize: int = 4,
                       given: int | None = None) -> int:
    """Rotations per scoring chunk: ``given``, else :func:`fit_count` of :func:`rotation_bytes` (CPU cap
    ``cap``, the fixed chunk used before, e.g. :func:`~cryolens.inference.estep.default_rotation_chunk`)."""
    if given is not None:
        return int(given)
    return fit_count(device, rotation_bytes(size, n_images, n_shifts, itemsize), cap)


def em_sizes(device, size: int, n_poses: int, n_shifts: int, dtype: torch.dtype, batch_size: int | None = None,
             pair_chunk: int | None = None) -> tuple[int, int]:
    """``(images per batch, pairs per insertion chunk)`` of an EM iteration in ``dtype`` scoring ``n_poses``
    poses per image, ``n_shifts`` of them shifts: the given values, else :func:`batch_size_for` and
    :func:`pair_chunk_for`."""
    item = torch.empty((), dtype=dtype).element_size()
    return (batch_size_for(device, size, n_poses, item, given=batch_size, n_shifts=n_shifts),
            pair_chunk_for(device, size, item, given=pair_chunk))

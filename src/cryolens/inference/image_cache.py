"""The images of a fixed-pose EM, transformed once: each image's centred transform at the full box with its
given shift undone, and its CTF, kept from one iteration to the next.

With the poses fixed (RELION's ``--skip_align``) nothing about an image changes between iterations but the
working box (RELION's ``current_size``), and the working box's image is the full-box one cropped: a
Fourier crop keeps the same frequencies, so the shift's phase ramp and the CTF of the full box restricted to
the central ``d × d`` are the working box's (frequency of centred index ``i``: ``(i − D/2) / (D·px)`` =
``(i' − d/2) / (d·px_d)``). RELION reads and transforms every image again each iteration; this cache does it
in the first and then only crops. Kept only where it fits (``12·N·D²`` bytes in single precision).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..imaging.fft import fft2_centered
from ..imaging.shift import phase_shift
from ..io.particles import Particles
from .distributed import shard
from .em import batches
from .likelihood import ctf_images
from .memory import free_memory_bytes


class ShiftedImageCache:
    """``(N, D, D)`` complex shift-undone transforms and ``(N, D, D)`` real CTFs (``None`` rows until filled).

    n, box: the particles' count and box; device, dtype: the compute device and real dtype.
    max_bytes: keep nothing when the arrays would need more (then :attr:`enabled` is False and
    :func:`fixed_pose_batches` transforms every batch as before).
    """

    def __init__(self, n: int, box: int, device, dtype: torch.dtype = torch.float32, max_bytes: int = 1 << 30):
        itemsize = torch.finfo(dtype).bits // 8
        self.enabled = 3 * itemsize * n * box * box <= max_bytes
        self.n, self.box, self.device, self.dtype = n, box, torch.device(device), dtype
        self.y: torch.Tensor | None = None
        self.c: torch.Tensor | None = None
        self.filled = torch.zeros(n, dtype=torch.bool)

    def complete(self, idx: np.ndarray) -> bool:
        """Whether every image of ``idx`` is in the cache."""
        return self.enabled and bool(self.filled[torch.as_tensor(idx)].all())

    def put(self, idx: torch.Tensor, y: torch.Tensor, c: torch.Tensor | None) -> None:
        """Store rows ``idx`` (a no-op when not :attr:`enabled`)."""
        if not self.enabled:
            return
        if self.y is None:
            self.y = torch.zeros(self.n, self.box, self.box, dtype=y.dtype, device=self.device)
            self.c = None if c is None else torch.zeros(self.n, self.box, self.box, dtype=c.dtype, device=self.device)
        self.y[idx.to(self.device)] = y
        if c is not None and self.c is not None:
            self.c[idx.to(self.device)] = c
        self.filled[idx.cpu()] = True

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``idx``: ``(Y (B, D, D), C (B, D, D) or None)``."""
        i = idx.to(self.device)
        return self.y[i], None if self.c is None else self.c[i]


def cache_bytes(device) -> int:
    """What a :class:`ShiftedImageCache` may take: a quarter of the free memory of ``device`` (the system's
    available memory on the CPU; 1 GiB where it cannot be read)."""
    free = free_memory_bytes(device)
    return (1 << 30) if free is None else free // 4


def full_box_images(data: Particles, idx: torch.Tensor, images: torch.Tensor, c_b, device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(Y (B, D, D) complex, C (B, D, D) or None)`` of a batch at the full box, each image's given shift
    (``data.shifts``, px; none: centred) undone."""
    y = fft2_centered(images.to(device=device, dtype=dtype))
    if data.shifts is not None:
        y = phase_shift(y, -data.shifts[idx].to(device=device, dtype=dtype))
    return y, ctf_images(c_b, images.shape[0], data.box_size, data.pixel_size, device, dtype)


def fixed_pose_batches(data: Particles, batch_size: int, cache: ShiftedImageCache | None, device,
                       dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(indices (B,), Y (B, D, D), C (B, D, D) or None)`` over this rank's images
    (:func:`full_box_images`), from ``cache`` where it holds them (no image read), else computed and stored."""
    mine = shard(np.arange(len(data)))
    if cache is not None and cache.complete(mine):
        for start in range(0, mine.size, batch_size):
            idx = torch.as_tensor(mine[start:start + batch_size])
            yield (idx, *cache.get(idx))
        return
    for idx, images, c_b in batches(data, None, batch_size, sharded=True):
        y, c = full_box_images(data, idx, images, c_b, device, dtype)
        if cache is not None:
            cache.put(idx, y, c)
        yield idx, y, c

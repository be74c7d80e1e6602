"""Homogeneous reconstruction from known poses and CTFs: weighted Fourier insertion with a
per-shell Wiener / MAP filter, gold-standard half-maps and their FSC.

For each image ``X_i`` (centered transform ``X̃_i``, shift ``s_i``, CTF ``c_i``, rotation
``R_i``) the shift is undone, and ``c_i · X̃_i`` and ``c_i²`` are inserted along the central
slice ``R_i`` into an oversampled (``pad``) Fourier grid. Each half-set ``h`` gives the
unfiltered half map ``Σ c X̃ / (Σ c² + ε)`` (``ε`` = 10⁻³ × the mean weight), whose FSC is the
gold-standard curve reported. The full map is the MAP estimate ``Σ c X̃ / (Σ c² + λ(k))`` with
``λ(k) = W(k) (1 − FSC_full(k)) / FSC_full(k)``: the shell-mean weight ``W(k)`` times the
noise-to-signal ratio implied by ``FSC_full = 2 FSC / (1 + FSC)`` (a per-shell Gaussian prior whose
power is read off the FSC, as RELION does).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..inference.distributed import shard
from ..inference.reconstruct import FourierAccumulator, insert_images, wiener_regularisation
from ..io.dataset import iterate_batches
from ..io.particles import Particles, half_set_labels
from ..memory import release_free_heap
from ..metrics.fsc import fsc, resolution_at
from .config import RecipeConfig, option


@dataclass
class BackprojectionResult:
    """Maps ``(D, D, D)`` float32 ``[z, y, x]``, half-map FSC ``(D//2+1,)`` and its 0.143 resolution (Å)."""

    volume: torch.Tensor
    half1: torch.Tensor
    half2: torch.Tensor
    fsc: np.ndarray
    resolution: float
    pixel_size: float
    n_images: tuple[int, int]
    info: dict = field(default_factory=dict)


def accumulate(particles: Particles, pad: int = 2, batch_size: int = 64, device=None, seed: int = 0,
               progress: bool = True) -> tuple[FourierAccumulator, FourierAccumulator]:
    """Stream every image once and fill the two half-set accumulators. On the CPU each half-set's share of a
    batch (transforms, CTFs, insertion) runs on its own thread while the next batch is read; a half's batches
    are inserted one after the other, in order (the sums do not depend on the threads)."""
    if particles.rotations is None:
        raise InputError(f"{particles.source or 'particles'}: no poses (e.g. rlnAngleRot/Tilt/Psi); "
                         "back-projection needs known poses")
    device = torch.device(device or "cpu")
    labels = torch.as_tensor(half_set_labels(particles, seed))
    halves = (FourierAccumulator(particles.box_size, pad, device), FourierAccumulator(particles.box_size, pad, device))
    mine = shard(np.arange(len(particles)))  # this rank's images
    bar = tqdm(total=len(mine), desc="back-projecting", unit="img", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=2) if device.type == "cpu" else None
    pending: list = [None, None]
    for idx, images in iterate_batches(particles, batch_size, mine):
        idx_t = torch.as_tensor(idx)
        lab = labels[idx_t]
        for h in (0, 1):
            m = lab == h
            if not bool(m.any()):
                continue
            if pool is None:
                insert_images(halves[h], particles, idx_t[m], images[m], device)
                continue
            if pending[h] is not None:
                pending[h].result()  # this half's previous batch first: one batch in flight per half
            pending[h] = pool.submit(insert_images, halves[h], particles, idx_t[m], images[m], device)
        bar.update(len(idx))
    for job in pending:
        if job is not None:
            job.result()
    bar.close()
    if pool is not None:
        pool.shutdown()
    release_free_heap()  # the batches' freed temporaries back to the system before the maps are made
    for acc in halves:  # the ranks' sums joined (torchrun; nothing to do in one process)
        acc.all_reduce()
    return halves


def backproject(particles: Particles, pad: int = 2, batch_size: int = 64, device=None, seed: int = 0,
                progress: bool = True) -> BackprojectionResult:
    """Reconstruct half-maps and the full map from ``particles`` with known poses and CTFs.

    Returns maps ``(D, D, D)`` float32 on CPU, the half-map FSC and its 0.143 resolution (Å).
    """
    h1, h2 = accumulate(particles, pad, batch_size, device, seed, progress)
    nshell = particles.box_size // 2 + 1
    # the half maps and their FSC: weak regularisation only (RELION's unfiltered halves). Wiener-
    # filtering both halves with one shared FSC would correlate them where the filter shrinks them
    # most (see cryolens.inference.autorefine); only the full map is filtered.
    eps = 1e-3 * torch.ones(nshell, dtype=torch.float64)
    halves = []
    for h in (h1, h2):  # one half's completed grids at a time
        halves.append(h.reconstruct(eps.to(h.device) * h.shell_weight().mean()))
        h.forget_finished()
    (v1, v2), counts, full = halves, (h1.count, h2.count), h1
    curve = fsc(v1, v2)
    full.absorb(h2)  # the full set's sums in the first half's grid
    del h, h1, h2  # the second half's grid is freed before the full map is completed
    fsc_full = 2 * curve / (1 + np.clip(curve, -0.999, None))
    vol = full.reconstruct(wiener_regularisation(full.shell_weight(), fsc_full))
    del full
    release_free_heap()
    res = resolution_at(curve, 0.143, particles.pixel_size, particles.box_size)
    return BackprojectionResult(vol.float().cpu(), v1.float().cpu(), v2.float().cpu(), np.asarray(curve), float(res),
                                particles.pixel_size, counts, {"pad": pad})


@dataclass(frozen=True)
class BackprojectionConfig(RecipeConfig):
    """Options of ``backprojection`` (RELION relion_reconstruct: 2× padded Fourier grid)."""

    pad: int = option(2, "oversampling of the Fourier grid (box × pad voxels per side)")
    batch_size: int = option(64, "images per batch streamed from disk (its FFT, CTF and scatter temporaries: "
                                 "~140 MB over the process at D 64 with 64 images, ~280 MB with 256)")


def fit(particles: Particles, known, run, config: BackprojectionConfig, device=None, progress: bool = True):
    """Registry entry point (:mod:`cryolens.methods.registry`): back-project with the known poses and CTFs."""
    from .registry import MethodOutputs

    result = backproject(particles, pad=config.pad, batch_size=config.batch_size, device=device,
                         seed=config.seed, progress=progress)
    return MethodOutputs(pixel_size=result.pixel_size, volume=result.volume, half_maps=(result.half1, result.half2),
                         half_labels=half_set_labels(particles, config.seed),
                         metrics={"resolution_halfmap_0143_A": result.resolution,
                                  "fsc_halfmaps": np.asarray(result.fsc).tolist(),
                                  "n_half1": result.n_images[0], "n_half2": result.n_images[1]})

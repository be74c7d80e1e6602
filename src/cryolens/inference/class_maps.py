"""The maps of one Class3D iteration (:mod:`~cryolens.inference.classes`): the maps in the working box, the
M-step's class maps, and leave-fold-out class references (``reference_folds``, issue 27).

**Leave-fold-out class references.** An image's class likelihood is computed against class maps that hold its
own noise, inserted with its own previous class posterior: an image given to class ``k`` makes ``k`` fit it
better the next time, so the posteriors sharpen before the data decide (a lock-in, as auto-refine's poses
held on to their own noise: :mod:`.fold_refs`). With ``fold`` (each image's fold ``0 … F−1``) every fold
``f`` keeps its own accumulator per class; the E-step of fold ``f``'s images uses each class's map made from
all sums **but** fold ``f``'s, under the class's prior ``λ_k`` of the iteration (the same ``σ²`` and ``τ²``
as the full class map: :func:`fold_class_maps`). The class maps, their ``data_vs_prior`` (the resolution),
the next ``τ²``, ``σ²`` and the class priors still use every image. Without ``fold``: RELION's behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from ..imaging.slice import prepare_volume_ft
from ..imaging.spectra import projector_power_spectrum, resize_volume
from .fold_refs import fold_out_maps, joined
from .likelihood import SliceFn, as_slicer
from .prior import map_prior
from .reconstruct import FourierAccumulator


def data_vs_prior(accs: Sequence[FourierAccumulator], sigma2: torch.Tensor, tau2: torch.Tensor, tau2_fudge: float,
                  pad: int) -> torch.Tensor:
    """``(K, D//2+1)`` RELION's ``data_vs_prior`` of each class accumulator, against the prior in every
    shell (no ``minres_map`` exemption: this is a report)."""
    lam, inv = map_prior(sigma2, tau2, tau2_fudge * pad ** 3, weak_prior=True)
    return torch.stack([torch.where(inv[k] > 0, a.shell_weight(2) / inv[k].clamp_min(1e-300), a.shell_weight() / lam[k])
                        for k, a in enumerate(accs)])


def working_maps(volumes: torch.Tensor, sigma2: torch.Tensor, tau2: torch.Tensor | None, size: int, pad: int,
                 dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[SliceFn]]:
    """The maps of one Class3D iteration in its working box ``size``: ``(vols (K, d, d, d), σ² (d//2+1,),
    τ² (K, d//2+1), slicers)`` — maps resized, σ² and a given τ² scaled by ``(d/D)⁴`` (else τ² of the
    resized maps), one slicer per class."""
    full = volumes.shape[-1]
    ratio, nsh = size / full, size // 2 + 1
    vols = torch.stack([resize_volume(v, size) for v in volumes.to(dev)])
    s2 = sigma2.to(device=dev, dtype=volumes.dtype)[:nsh] * ratio ** 4
    fts = [prepare_volume_ft(v, pad) for v in vols]
    tau2 = (torch.stack([projector_power_spectrum(f, size) for f in fts]) if tau2 is None
            else tau2.to(dev)[:, :nsh] * ratio ** 4)
    return vols, s2, tau2, [as_slicer(f, size) for f in fts]


def class_maps(accs: Sequence[FourierAccumulator], vols: torch.Tensor, s2: torch.Tensor, tau2: torch.Tensor,
               tau2_fudge: float, pad: int, minres_map: int, full: int, with_tau2: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """M-step maps of the class accumulators (a class with nothing inserted keeps its map), back at box
    ``full``: ``(volumes, their τ² (None unless with_tau2: a padded full-box transform per class), the prior
    (λ, its inverse part) used, data_vs_prior)``."""
    lam, inv_lam = map_prior(s2, tau2, tau2_fudge * pad ** 3, weak_prior=True, minres_map=minres_map)
    work_vols = [a.reconstruct(lam[k], inv_lam[k]) if a.count > 0 else vols[k] for k, a in enumerate(accs)]
    dvp = data_vs_prior(accs, s2, tau2, tau2_fudge, pad)
    new_vols = torch.stack([resize_volume(v, full) for v in work_vols])
    new_tau2 = (torch.stack([projector_power_spectrum(prepare_volume_ft(v, pad), full) for v in new_vols])
                if with_tau2 else None)
    return new_vols, new_tau2, (lam, inv_lam), dvp


def fold_slicers(fold_volumes: torch.Tensor | None, size: int, pad: int, dev, dtype) -> list[list[SliceFn]] | None:
    """Per fold, one slicer per class of the leave-fold-out maps ``(F, K, D, D, D)`` resized to the working box
    ``size`` (``None`` without them: every fold uses the class maps)."""
    if fold_volumes is None:
        return None
    return [[as_slicer(prepare_volume_ft(resize_volume(v.to(device=dev, dtype=dtype), size), pad), size) for v in f]
            for f in fold_volumes]


def fold_views(w, idx: torch.Tensor) -> Iterator[tuple[object, slice | torch.Tensor, int | None]]:
    """``(view, positions in the batch, fold)`` of a batch of images ``idx (B,)``: ``w`` (a
    :class:`~cryolens.inference.classes._Work`) as it is, all positions and fold ``None`` without folds; else, per
    fold present, ``w`` with that fold's class slicers (of its leave-fold-out maps; the class maps when there are none
    yet) and accumulators, sharing every other sum."""
    if w.parts is None:
        yield w, slice(None), None
        return
    f_b = w.fold.to(idx.device)[idx]
    for f in torch.unique(f_b).tolist():
        sel = (f_b == f).nonzero(as_tuple=True)[0]
        yield replace(w, slicers=w.slicers if w.fold_slicers is None else w.fold_slicers[f], accs=w.parts[f]), sel, f


def join_folds(w) -> None:
    """Sum each fold's class accumulators over the ranks and join them into ``w.accs`` (one per class); without
    folds, sum ``w.accs`` over the ranks."""
    for acc in ([a for p in w.parts for a in p] if w.parts is not None else w.accs):
        acc.all_reduce()
    if w.parts is not None:
        w.accs = [joined([p[k] for p in w.parts]) for k in range(len(w.parts[0]))]


def fold_class_maps(w, prior: tuple[torch.Tensor, torch.Tensor], new_vols: torch.Tensor) -> torch.Tensor | None:
    """``(F, K, D, D, D)`` each class's map without each fold's sums, under the class's prior ``(λ, inverse part)``
    of :func:`class_maps` (a class with nothing inserted: its new map), back at the full box; ``None`` without
    folds."""
    if w.parts is None:
        return None
    out, dt = [], new_vols.dtype
    for k, total in enumerate(w.accs):
        if total.count == 0:
            out.append(new_vols[k].expand(len(w.parts), *new_vols.shape[1:]))
            continue
        maps = fold_out_maps(total, [p[k] for p in w.parts], prior[0][k], prior[1][k]).to(new_vols.device, dt)
        out.append(torch.stack([resize_volume(m, w.full) for m in maps]))
    return torch.stack(out, 1)

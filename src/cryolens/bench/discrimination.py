"""Does a task's heterogeneity matter? The check every heterogeneous task of a profile must pass.

On the ground truth alone (no method runs): the per-image FSC-AUC of the true per-image maps against
that of the consensus map (the population-weighted mean of the maps, what a homogeneous method converges
to), both against each image's true map (:func:`cryolens.metrics.heterogeneity.heterogeneity_gain`).
A benchmark on which ignoring heterogeneity costs less than :data:`MIN_GAIN` (15 %) cannot tell
heterogeneous methods from homogeneous ones. The gain is measured unfiltered (the definition) and after
low-passing both answers to a few resolutions a method might reach, so a set is not passed on detail
finer than any method recovers.

:func:`smaller` makes the fast version the tests use: the same physical box on fewer pixels and fewer
states along the same range (a coarser check: the gain shrinks with the sampling).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..metrics.heterogeneity import heterogeneity_gain
from .suite import Task, task_states

MIN_GAIN = 0.15


def smaller(task: Task, box: int, max_states: int) -> Task:
    """``task`` on a ``box``-pixel grid of the same physical size (pixel size × D / box) and, for counted
    states, at most ``max_states`` states over the same range."""
    t = copy.deepcopy(task)
    d = int(t.dataset["box"])
    t.dataset["pixel_size"] = float(t.dataset["pixel_size"]) * d / box
    t.dataset["box"] = int(box)
    het = t.dataset["heterogeneity"]
    if "n_states" in het and int(het["n_states"]) > max_states:
        het["n_states"] = int(max_states)
        het.pop("populations", None)  # given per state, they no longer fit: uniform
    return t


def task_gain(task: Task, resolutions: tuple[float | None, ...] = (None,), device=None) -> dict:
    """The heterogeneous gain of ``task``'s ground truth at each resolution (Å; None = unfiltered).

    Returns ``{"task", "n_states", "pixel_size", "box", "gains": {label: heterogeneity_gain dict}}`` with
    labels ``"nyquist"`` or ``"<r>A"``; populations are the task's (uniform when it gives none)."""
    spec = task.dataset
    vols, _, _, pops, _ = task_states(spec, device)
    k = vols.shape[0]
    p = np.full(k, 1.0 / k) if pops is None else np.asarray(pops, dtype=np.float64)
    px = float(spec["pixel_size"])
    gains = {}
    with torch.no_grad():
        for r in resolutions:
            gains["nyquist" if r is None else f"{r:g}A"] = heterogeneity_gain(vols.cpu(), p, px, r)
    return {"task": task.name, "n_states": k, "pixel_size": px, "box": int(spec["box"]), "gains": gains}

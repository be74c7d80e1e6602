"""``relion-class3d``: RELION-style 3D classification (Class3D) — K maps, poses searched, CTF known.

Composition (no physics here): the Class3D schedule of :mod:`cryolens.inference.classify` over the EM
iteration of :mod:`cryolens.inference.classes`
(posterior over class × rotation × shift with class priors, per-class weighted back-projection with
the ``T``-scaled ``τ²`` prior, σ² and class-prior updates), iterated ``n_iterations`` times
(RELION's default 25) from a start map, with RELION's defaults (Scheres 2012; RELION 3.1 GUI):

- start: the ``--init-map`` low-passed to ``initial_lowpass`` (60 Å, ``--ini_high``), one copy per
  class; in the first iteration every particle is given to a random class (seeded; RELION's random
  division into K subsets, here of equal sizes), so the classes start from different random subsets (``K`` distinct
  start maps ``(K, D, D, D)`` start with uniform class priors instead); without a start
  map, a homogeneous ab initio map (:mod:`cryolens.inference.abinit`, ``abinit_iterations``) is made first;
- sampling: SO(3) grid level ``healpix_order`` (3 = 7.5°, RELION's Class3D default; an exhaustive
  grid, RELION's adaptive oversampling is not done — level 2, 15°, is 8× cheaper); offsets within
  ``offset_range`` px (circular, RELION's) in steps of ``offset_step``;
- frequency limit: the E-step uses shells up to the current resolution + ``incr_size`` (10); the
  current resolution of a class is where its ``data_vs_prior`` falls below 1;
- working box: each iteration works on images and maps Fourier-cropped to ``2·(k_max + work_margin)``
  (RELION's ``current_size``), so its cost follows the resolution, not the box;
- ``tau2_fudge`` T = 4 (``τ²`` from the current maps' power; where it is zero — above the start map's
  low-pass — RELION's weak prior); the prior on every shell (``minres_map`` 0; RELION's 5 left the low shells of
  a small class unregularised, docs/METHODS.md); ``modal``: hard assignments (the modal variant);
- ``skip_align`` (RELION's ``--skip_align``; off by default): every image keeps the pose it comes with
  (e.g. from a consensus refinement) and only the class is inferred
  (:func:`~cryolens.inference.classes.class_em_iteration_fixed_poses`), in the same working box;
- ``reference_folds``: ``F ≥ 2`` scores each image against class maps made without its fold's images
  (:mod:`cryolens.inference.class_maps`), 0 is RELION's behaviour; by default 4 with ``skip_align`` (measured on
  four structures against RELION, docs/METHODS.md) and 0 when poses are searched (there the fold maps multiply the
  cached slice values ``F``-fold).

Each iteration is checkpointed (``checkpoint.pt``, :mod:`cryolens.io.checkpoint`): ``resume`` continues
from it and finishes with the same result as an uninterrupted run. ``fit`` returns the class maps, the
poses of the best class, labels, ``rlnMaxValueProbDistribution`` and the per-iteration history; the one
writer makes ``class_001.mrc`` …, ``particles.star`` (``rlnClassNumber``, 1-based), metrics and plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..inference import classify as _schedule
from ..inference.classes import ClassEMResult, class_em_iteration, class_em_iteration_fixed_poses  # noqa: F401
from ..inference.classify import ClassifyResult, image_power_spectrum  # noqa: F401
from ..inference.rank_timing import totals
from ..io.particles import Particles
from .config import RecipeConfig, as_dict, build_config, option


@dataclass(frozen=True)
class Class3DConfig(RecipeConfig):
    """Options of relion-class3d (RELION 3.1 Class3D defaults, module docstring)."""

    n_classes: int = option(2, "number of classes K")
    n_iterations: int = option(25, "EM iterations (RELION's --iter)")
    tau2_fudge: float = option(4.0, "regularisation T (RELION's --tau2_fudge)")
    healpix_order: int = option(3, "SO(3) grid level of the pose search (3 = 7.5°)")
    offset_range: float = option(5.0, "offset search range, px (circular)")
    offset_step: float = option(1.0, "offset search step, px")
    initial_lowpass: float = option(60.0, "low-pass of the start map, Å (RELION's --ini_high)")
    incr_size: int = option(10, "shells above the current resolution used by the E-step")
    mass: float = option(0.999, "posterior mass of the significant set (RELION's --adaptive_fraction)")
    max_significant: int = option(200, "at most this many (class, pose) pairs per image")
    modal: bool = option(False, "hard assignment of the best (class, pose) (classification EM)")
    pad: int = option(2, "oversampling of the projector and the accumulator")
    batch_size: int | None = option(None, "images per E-step batch; none: from the free memory (≤ 64 on a CPU)")
    init_map: str | None = option(None, "start map (.mrc), or K maps in one file; none: ab initio first")
    abinit_iterations: int = option(150, "ab initio iterations when no start map is given")
    work_margin: int = option(4, "shells above k_max kept in the working box, px")
    minres_map: int = option(0, "shells below this get no prior (RELION's --minres_map, 5 there; 0 here: "
                                "docs/METHODS.md)")
    skip_align: bool = option(False, "keep each image's given pose, infer only the class (--skip_align)")
    reference_folds: int | None = option(None, "F ≥ 2: each image's class likelihood against class maps without its "
                                              "fold; 0: none (RELION's); none: 4 with skip_align, else 0")
    settle_fraction: float = option(0.001, "with reference folds: once fewer than this fraction of the images "
                                           "change class, the full class maps for every image (0: folds throughout)")
    resume: bool = option(False, "continue from the run folder's checkpoint.pt")


DEFAULTS = as_dict(Class3DConfig())


def as_config(config: Class3DConfig | dict | None) -> Class3DConfig:
    """``config`` as a :class:`Class3DConfig` (a dict of options is coerced: scripts and tests)."""
    if isinstance(config, Class3DConfig):
        return config
    return build_config(Class3DConfig, "relion-class3d", None, config)


def classify(particles: Particles, init_volume: torch.Tensor | None, config: Class3DConfig | dict | None = None,
             run=None, device=None, progress: bool = True, resume: bool = False,
             on_iteration: Callable[[int, ClassEMResult], None] | None = None) -> ClassifyResult:
    """:func:`cryolens.inference.classify.classify` with the recipe's options (a dict is coerced)."""
    return _schedule.classify(particles, init_volume, as_config(config), run, device, progress, resume, on_iteration)


def read_start_map(path: str | None, box: int) -> torch.Tensor | None:
    """The start map(s) ``(D, D, D)`` or ``(K, D, D, D)`` float32 of an ``.mrc`` (``None`` without a path)."""
    if not path:
        return None
    from ..io.mrc import read_volume

    arr, _ = read_volume(path)
    init = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if tuple(init.shape[-3:]) != (box,) * 3:
        raise InputError(f"{path}: map is {tuple(init.shape)}, particles need {(box,) * 3}")
    return init


def outputs(result: ClassifyResult, pixel_size: float, metrics: dict | None = None):
    """The :class:`~cryolens.methods.registry.MethodOutputs` of a Class3D result."""
    from .registry import MethodOutputs

    h = result.history
    counts = np.bincount(result.labels, minlength=result.volumes.shape[0])
    m = {"n_classes": int(result.volumes.shape[0]), "class_prior": result.class_prior.tolist(),
         "class_counts": counts.tolist(), "resolution_A": h[-1]["resolution_A"] if h else None,
         "iterations": len(h), "rank_seconds": totals(h), **(metrics or {})}  # per rank: E-, M-step, writes, waits
    return MethodOutputs(pixel_size=pixel_size, volumes=result.volumes, rotations=result.rotations,
                         shifts=result.shifts, labels=result.labels, history=list(h), metrics=m,
                         particle_columns={"rlnMaxValueProbDistribution": result.max_weight.double().numpy()})


def fit(particles: Particles, known, run, config: Class3DConfig, device=None, progress: bool = True):
    """Registry entry point: Class3D with ``config`` (``init_map`` a path or ``None``)."""
    cfg = as_config(config)
    result = classify(particles, read_start_map(cfg.init_map, particles.box_size), cfg, run, device, progress,
                      resume=cfg.resume)
    return outputs(result, particles.pixel_size)

"""Auto-refine's schedule (:mod:`~cryolens.inference.autorefine`): after each iteration, what the next one
searches (grid level, shells) and whether the run has converged — RELION's ``updateAngularSampling`` and
``checkConvergence``, simplified, with the sampling following the measured pose accuracy.

- *Stall*: an iteration gained less than ``min_gain_shells`` of resolution and its median pose change is
  below twice the oversampled step (or two iterations in a row gained nothing). A stall refines the grid
  by one level, up to ``max_order``.
- *Fine enough* (``follow_accuracy``): the oversampled step is already below 0.75 × the measured accuracy
  (RELION's criterion): a finer grid cannot help, so a stall does not refine.
- *Grid coarser than the posterior* (``follow_accuracy``): the accuracy is below the oversampled step, so
  neighbouring grid points differ by more than one unit of expected log-likelihood, each posterior sits on
  one point and the map pays the grid's quantisation: refine now, without a stall (into the local searches
  only once the poses have settled, as a stall asks).
- *Converged*: a stall that cannot refine (at ``max_order``, or fine enough) **and** pose changes that
  have stopped shrinking — the median change is at least 0.97 × the smallest of the earlier iterations
  (RELION's ``nr_iter_wo_large_hidden_variable_changes``, which counts an iteration only when its
  changes are within 3 % of the smallest so far). While the poses still move less each iteration they are
  still converging, and stopping then leaves them short of the floor the data allows (issue 27: 1PWC
  stopped at 2.51° with changes 5.96 → 1.71 → 0.82°, its true-pose floor 2.01°).
  With fold references (``reference_folds ≥ 2``) a stall at the finest level (``max_order``) also converges
  once the median pose change is within the measured accuracy: no image then meets its own noise in its
  reference, so a pose that moves less than its own uncertainty is at rest, not held (issue 27's runs on five
  structures: the iterations after that point changed the median error and the map by < 2 % and took 25–43 %
  of the time). At a coarser level that is already fine enough the changes must still stop shrinking: at
  SNR 0.05 the accuracy measured there (3.4°) was below the error (5.1°) and the poses were still improving.
"""

from __future__ import annotations

import math

import numpy as np

from ..imaging.so3_grid import angular_step
from .oversampling import Stage
from .refine_diag import Tally, local_sigma_deg
from .refine_state import RefineConfig, RefineState

#: RELION's tolerance: changes within 3 % of the smallest so far count as "no large change"
SHRINK_TOLERANCE = 0.97


def shell_of(resolution: float, size: int, pixel_size: float) -> float:
    """The Fourier shell (index, fractional) of ``resolution`` Å in a box of ``size`` at ``pixel_size``; 0 for
    an infinite or non-positive resolution."""
    return 0.0 if not math.isfinite(resolution) or resolution <= 0 else size * pixel_size / resolution


def changes_still_shrinking(history: list[dict], change_deg: float) -> bool:
    """Whether the median pose change ``change_deg`` of this iteration is below 0.97 × the smallest finite
    median change of the earlier iterations ``history`` (False when there is none, or the change is not
    finite)."""
    earlier = [h["median_pose_change_deg"] for h in history if math.isfinite(h["median_pose_change_deg"])]
    return bool(earlier) and math.isfinite(change_deg) and change_deg < SHRINK_TOLERANCE * min(earlier)


def next_schedule(state: RefineState, stage: Stage, maps: dict, tally: Tally, cfg: RefineConfig, size: int,
                  px: float) -> dict:
    """What changes for the next iteration (module docstring): the new state's schedule fields (order,
    refinements, no_gain, converged, best_shell, k_max, history, accuracy_deg) and the iteration's history
    record. maps: this iteration's ``resolution`` (Å), ``curve``, ``sigma2``, ``tau2``."""
    res = maps["resolution"]
    shell = shell_of(res, size, px)
    fine_step = angular_step(stage.order + 1)
    first = state.iteration == 0
    med_change = float("inf") if first else float(np.nanmedian(tally.change.numpy()))
    no_gain = state.no_gain + 1 if shell - state.best_shell < cfg.min_gain_shells else 0
    stalled = (not first) and no_gain > 0 and (med_change <= 2 * fine_step or no_gain >= 2)
    diag = tally.diag.summary()  # joined over the ranks: once per iteration
    acc = diag["accuracy_deg"]
    fine_enough = cfg.follow_accuracy and math.isfinite(acc) and fine_step < 0.75 * acc
    coarse_grid = (cfg.follow_accuracy and math.isfinite(acc) and acc < fine_step
                   and (med_change <= 2 * fine_step or state.order + 1 != cfg.local_order))
    shrinking = changes_still_shrinking(state.history, med_change)
    at_rest = (cfg.reference_folds >= 2 and state.order >= cfg.max_order and math.isfinite(acc)
               and med_change <= acc)
    order, refinements, converged = state.order, state.refinements, False
    if stalled or coarse_grid:
        if order < cfg.max_order and not fine_enough:
            order, refinements, no_gain = order + 1, refinements + 1, 0
        elif stalled and (not shrinking or at_rest):
            converged = True
    hist = {**_record(state, stage, maps, tally, cfg, med_change), "stalled": bool(stalled),
            "fine_enough": bool(fine_enough), "grid_coarser_than_accuracy": bool(coarse_grid), **diag,
            "changes_shrinking": shrinking, "changes_within_accuracy": at_rest}
    return {"order": order, "refinements": refinements, "no_gain": no_gain, "converged": converged,
            "best_shell": max(state.best_shell, shell), "k_max": int(min(size // 2, math.floor(shell) + cfg.incr_size)),
            "history": state.history + [hist], "accuracy_deg": acc if math.isfinite(acc) else state.accuracy_deg}


def _record(state: RefineState, stage: Stage, maps: dict, tally: Tally, cfg: RefineConfig, med_change: float) -> dict:
    """The iteration's history record but the schedule's decisions and the pose diagnostic: its sampling,
    resolution and FSC, pose and posterior statistics, and the σ² / τ² spectra."""
    return {"iteration": state.iteration + 1, "order": stage.order, "angular_step_deg": angular_step(stage.order + 1),
            "local": stage.local, "k_max": stage.k_max, "offset_range_px": stage.offset_range,
            "offset_step_px": stage.offset_step / 2, "resolution_A": maps["resolution"],
            "resolution_unmasked_A": maps.get("resolution_unmasked", maps["resolution"]),
            "fsc": np.asarray(maps["curve"]).tolist(),
            "median_pose_change_deg": med_change, "mean_max_weight": float(tally.max_weight.mean()),
            "mean_significant": float(tally.n_significant.mean()),
            "significant_at_cap": float((tally.n_significant >= stage.caps[1]).double().mean()),
            "max_coarse": stage.caps[0], "max_significant": stage.caps[1],
            "kept_mass_mean": float(tally.kept_mass[tally.kept_mass.isfinite()].mean()),
            "local_sigma_deg": local_sigma_deg(stage.order, state.accuracy_deg, cfg) if stage.local else None,
            "local_range_deg": math.degrees(stage.local_range_rad) if stage.local else None,
            "image_size_px": 2 * stage.k_max, "sigma2": maps["sigma2"][0].double().tolist(),
            "tau2": maps["tau2"].double().tolist()}

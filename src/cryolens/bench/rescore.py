"""Score finished runs again from what their folders hold (after a change to the scoring), without
running the methods again.

A run is rebuilt from its files: ``map.mrc``, ``half1/2.mrc``, ``class_*.mrc``, the estimated poses
(``est_rotations`` in ``arrays.npz``, or RELION's ``relion/out/run_data.star`` for the RELION
adapters) and ``latents``. Metrics that need the method's decoder (per-image maps) cannot be
recomputed and are kept from the first scoring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..io.files import atomic_write_text
from ..io.mrc import read_volume
from ..io.runfolder import RunFolder
from ..methods.registry import MethodOutputs
from .suite import Task


def _maybe(path: Path) -> torch.Tensor | None:
    return torch.from_numpy(np.ascontiguousarray(read_volume(path)[0])) if path.is_file() else None


def rescore_run(run_dir: str | os.PathLike) -> dict | None:
    """Rescore one run folder in place (metrics.json, result.json, plots, report.html); returns the
    new result row, or None when the run did not finish or its task gave the poses (nothing to redo)."""
    from .outputs import write_run_outputs
    from .scoring import Truth, score

    rd = Path(run_dir)
    res_path = rd / "result.json"
    if not res_path.is_file():
        return None
    row = json.loads(res_path.read_text())
    if row.get("status") != "ok" or row.get("known", {}).get("poses", True):
        return None
    cfg = json.loads((rd / "config.json").read_text())["arguments"]
    task = Task.from_dict(cfg["task"])
    dataset = Path(cfg["dataset"])
    old = json.loads((rd / "metrics.json").read_text())
    arrays: dict = {}
    if (rd / "arrays.npz").is_file():
        with np.load(rd / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
    rotations = arrays.get("est_rotations")
    if rotations is None and (rd / "relion" / "out" / "run_data.star").is_file():
        from ..io.star import read_star
        from .relion import read_refine_outputs

        rotations = read_refine_outputs(rd / "relion" / "out", read_star(rd / "relion" / "particles.star"))[0]
    h1, h2 = _maybe(rd / "half1.mrc"), _maybe(rd / "half2.mrc")
    classes = sorted(rd.glob("class_*.mrc"))
    outputs = MethodOutputs(
        pixel_size=float(row.get("pixel_size", 1.0)), volume=_maybe(rd / "map.mrc"),
        half_maps=(h1, h2) if h1 is not None and h2 is not None else None,
        volumes=torch.stack([_maybe(p) for p in classes]) if classes else None,
        rotations=None if rotations is None else torch.as_tensor(np.asarray(rotations), dtype=torch.float32),
        latents=arrays.get("latents"))
    truth = Truth(dataset)
    metrics, new_arrays = score(task, truth, outputs, task.known)
    merged = {**old, **metrics}
    for key in ("per_image_auc",):
        if key in arrays and key not in new_arrays:
            new_arrays[key] = arrays[key]
    write_run_outputs(RunFolder(rd), task, row["method"], outputs, truth, merged, new_arrays)
    row["metrics"] = {k: v for k, v in merged.items() if not isinstance(v, (list, dict))}
    row["rescored"] = True
    atomic_write_text(res_path, json.dumps(row, indent=2, default=str) + "\n")
    return row


def rescore(run_root: str | os.PathLike) -> list[dict]:
    """:func:`rescore_run` on every run under ``run_root/runs``; returns the rows rescored."""
    out = []
    for res in sorted(Path(run_root).glob("runs/*/*/result.json")):
        row = rescore_run(res.parent)
        if row is not None:
            out.append(row)
    return out

"""Diagnostics the review asks for: the spread of a recipe's metrics over seeds and one
hyper-parameter (:func:`sweep`), and the effect of known errors in the nuisance variables on the
map (:func:`inject_errors`: perturb the known poses or defocus by known amounts, back-project,
score against the truth)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.files import atomic_write_text
from .runner import Method, _config_for, run_one
from .suite import Task, ensure_dataset


def sweep(task: Task, method: Method, param: str | None, values: list, seeds: list[int], out: str | os.PathLike,
          budget_s: float = 600, memory_mb: float = 6000, cache_dir=None, device: str | None = None,
          threads: int = 1, metric_keys: list[str] | None = None) -> dict:
    """Run ``method`` on ``task`` for every value of option ``param`` (None: no parameter, one value)
    × seed (option ``seed``), each a normal benchmark run in ``out/runs/<param>=<value>/seed<s>``;
    writes ``sweep.json`` and ``sweep.png`` (the spread of each metric over seeds). Returns the table."""
    out = Path(out)
    rec = method.recipe
    if param is not None and param not in rec.defaults:
        raise InputError(f"recipe {method.name} has no option {param!r} (options: {', '.join(sorted(rec.defaults))})")
    if "seed" not in rec.defaults and len(seeds) > 1:
        raise InputError(f"recipe {method.name} has no seed option; give one seed")
    dataset_dir = ensure_dataset(task, cache_dir)
    values = values if param is not None else [None]
    table: dict = {"task": task.name, "method": method.name, "param": param, "values": values, "seeds": seeds,
                   "runs": []}
    for v in values:
        for s in seeds:
            over = {}
            if param is not None:
                over[param] = v
            if "seed" in rec.defaults:
                over["seed"] = s
            cfg = _config_for(method, task, dataset_dir, {method.name: over})
            run_dir = out / "runs" / (f"{param}={v}" if param else "default") / f"seed{s}"
            row = run_one(method, task, dataset_dir, run_dir, cfg, budget_s, memory_mb, device, threads, halves=False)
            table["runs"].append({"value": v, "seed": s, "status": row["status"], "metrics": row.get("metrics", {}),
                                  "wall_s": row["wall_s"]})
    keys = metric_keys or sorted({k for r in table["runs"] for k, x in r["metrics"].items()
                                  if isinstance(x, (int, float)) and not isinstance(x, bool)
                                  and not k.startswith("method_") and k not in ("fit_s",)})[:6]
    series = {k: [[_f(r["metrics"].get(k)) for r in table["runs"] if r["value"] == v] for v in values] for k in keys}
    table["spread"] = {k: [{"mean": float(np.nanmean(x)) if len(x) else None, "std": float(np.nanstd(x)) if len(x)
                            else None} for x in (np.asarray([y for y in xs if y is not None], float) for xs in ser)]
                       for k, ser in series.items()}
    from ..analysis.bench_plots import plot_sweep

    plot_sweep([str(v) for v in values], series, out / "sweep.png", param or "(defaults)",
               f"{method.name} on {task.name}: spread over seeds {seeds}")
    atomic_write_text(out / "sweep.json", json.dumps(table, indent=1, default=str) + "\n")
    return table


def _f(x):
    if x is None or isinstance(x, str):
        return None
    return float(x) if math.isfinite(float(x)) else None


def perturb_rotations(rotations: torch.Tensor, sigma_deg: float, generator: torch.Generator) -> torch.Tensor:
    """Each rotation composed with a random one about a uniform axis by an angle ``|N(0, σ)|``
    (degrees): ``R' = E R`` with ``E = exp(θ [u]×)``."""
    from ..imaging.rotations import rotvec_to_matrix

    n = rotations.shape[0]
    axis = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    angle = torch.randn(n, 1, generator=generator, dtype=torch.float64).abs() * math.radians(sigma_deg)
    return (rotvec_to_matrix(axis * angle) @ rotations.double()).float()


def inject_errors(task: Task, out: str | os.PathLike, pose_errors_deg: list[float], defocus_errors_a: list[float],
                  cache_dir=None, device=None, seed: int = 0) -> dict:
    """Back-project ``task``'s dataset from its true poses and CTFs perturbed by known amounts (pose
    errors: random rotations of RMS-ish angle σ degrees; defocus: Gaussian errors of σ Å added to both
    defocus values) and score each map against the truth (FSC 0.5). Writes ``injection.json`` and
    ``injection.png``; returns ``{"pose": [(σ, resolution Å)], "defocus": [...]}``."""
    from ..io.star import read_star
    from ..methods.backprojection import backproject
    from ..metrics.fsc import fsc, resolution_at
    from .scoring import Truth

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir = ensure_dataset(task, cache_dir)
    particles = read_star(dataset_dir / "particles.star")
    truth = Truth(dataset_dir)
    ref = truth.volumes[0] if task.heterogeneity == "homogeneous" else truth.consensus
    px, d = truth.pixel_size, ref.shape[-1]

    def resolution(p) -> tuple[float, list]:
        res = backproject(p, device=device, seed=seed, progress=False)
        curve = fsc(res.volume, ref)
        return resolution_at(curve, 0.5, px, d), curve.tolist()

    result: dict = {"task": task.name, "pose": [], "defocus": []}
    for sigma in pose_errors_deg:
        g = torch.Generator().manual_seed(seed + 1)
        p = particles.subset(np.arange(len(particles)))
        p.rotations = perturb_rotations(p.rotations, float(sigma), g)
        r, c = resolution(p)
        result["pose"].append({"sigma_deg": float(sigma), "resolution_A": r, "fsc": c})
    for sigma in defocus_errors_a:
        if particles.ctf is None:
            raise InputError(f"task {task.name}: the dataset has no CTF to perturb")
        g = torch.Generator().manual_seed(seed + 2)
        p = particles.subset(np.arange(len(particles)))
        err = torch.randn(len(p), generator=g) * float(sigma)
        c0 = p.ctf
        p.ctf = type(c0)(**{**c0.as_dict(), "defocus_u": c0.defocus_u + err, "defocus_v": c0.defocus_v + err})
        r, c = resolution(p)
        result["defocus"].append({"sigma_A": float(sigma), "resolution_A": r, "fsc": c})
    from ..analysis.bench_plots import plot_error_injection

    series = {}
    if result["pose"]:
        series["pose error σ (degrees)"] = ([x["sigma_deg"] for x in result["pose"]],
                                            [x["resolution_A"] for x in result["pose"]])
    if result["defocus"]:
        series["defocus error σ (Å)"] = ([x["sigma_A"] for x in result["defocus"]],
                                         [x["resolution_A"] for x in result["defocus"]])
    plot_error_injection(series, out / "injection.png", f"back-projection on {task.name} with injected errors")
    atomic_write_text(out / "injection.json", json.dumps(result, indent=1, default=str) + "\n")
    return result

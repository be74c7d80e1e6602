"""Write one benchmark run's folder: what the CLI writes for the same recipe (the one writer,
:func:`cryolens.analysis.writer.write_run`: maps, ``particles.star``, ``z.npy``, plots), then the
scoring-specific files on top: ``metrics.json`` with the scores, per-image arrays (``arrays.npz``,
read back by the leaderboard's plots), ``fsc.png`` / ``sections.png`` against the ground truth in
the aligned frame, pose-error / AUC / latent plots, and report.html."""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.bench_plots import plot_auc_histogram, plot_latents, plot_pose_errors
from ..analysis.plots import plot_fsc, plot_sections
from ..analysis.report import write_report
from ..io.files import atomic_path


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def write_run_outputs(run, task, method: str, outputs, truth, metrics: dict, arrays: dict, particles=None,
                      recipe=None) -> None:
    """Everything a run folder holds after scoring (see :mod:`cryolens.bench.runner`). With the
    ``particles`` the recipe was given, the run folder of the one writer first (the same files as the
    CLI's); without (a rescore), only the scoring files and ``metrics.json`` are rewritten."""
    if particles is not None:
        from ..analysis.writer import write_run

        metrics = write_run(outputs, particles, run, recipe, report=False, metrics=metrics)
    write_scoring_files(run, task, method, outputs, truth, metrics, arrays)
    run.write_metrics(metrics)
    write_report(run.root, f"{method} on {task.name}")


def write_scoring_files(run, task, method: str, outputs, truth, metrics: dict, arrays: dict) -> None:
    """The benchmark's own files: FSC and sections against the truth, per-image plots, ``arrays.npz``."""
    px, d = truth.pixel_size, truth.volumes.shape[-1]
    curves = {}
    if "gt_fsc" in metrics:
        curves["map vs ground truth"] = np.asarray(metrics["gt_fsc"])
    if "halfmap_fsc" in metrics:
        curves["half maps"] = np.asarray(metrics["halfmap_fsc"])
    for k, c in enumerate(metrics.get("conformation_fsc", []) or []):
        if len(c):
            curves[f"state {k} vs best class"] = np.asarray(c)
    if curves:
        plot_fsc(curves, px, d, run.path("fsc.png"), title=f"{method} on {task.name}")
    if outputs.volume is not None:
        from .scoring import Frame

        f = metrics.get("frame", {})
        frame = Frame(None if f.get("rotation") is None else torch.tensor(f["rotation"], dtype=torch.float64),
                      bool(f.get("mirrored")), tuple(f.get("shift_voxels", (0, 0, 0))))
        ref = truth.volumes[0] if task.heterogeneity == "homogeneous" else truth.consensus
        plot_sections({"map (truth frame)": frame(outputs.volume).numpy(), "ground truth": ref.numpy()},
                      run.path("sections.png"))
    if "pose_errors_deg" in arrays:
        plot_pose_errors({method: arrays["pose_errors_deg"]}, run.path("pose_error.png"))
    if "per_image_auc" in arrays:
        plot_auc_histogram({method: arrays["per_image_auc"]}, run.path("per_image_auc.png"))
    if "latents" in arrays:
        if "truth_values" in arrays:
            plot_latents(arrays["latents"], arrays["truth_values"], run.path("latents.png"), "hinge angle (°)")
        else:
            plot_latents(arrays["latents"], truth.labels, run.path("latents.png"), "true state", discrete=True)
    if arrays:
        with atomic_path(run.path("arrays.npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})

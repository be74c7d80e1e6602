"""The one writer of a run folder: :func:`write_run` turns a recipe's
:class:`~cryolens.methods.registry.MethodOutputs` into files. The CLI commands (``backproject``,
``refine``, ``classify``, ``abinit``, ``train``) and the benchmark runner all call it, so one recipe
gives the same folder either way (the benchmark adds its scoring files, :mod:`cryolens.bench.outputs`).

What it writes (each only when the outputs hold it):

- maps (``.mrc`` with the voxel size): ``map.mrc``, ``half1.mrc``, ``half2.mrc``, ``class_001.mrc`` …
  (1-based, RELION's numbering; written when there is no consensus map or more than one class), and
  ``<key>.mrc`` for every ``extra_volumes`` entry;
- ``particles.star`` (RELION 3.1): the input particles with the estimated poses, ``rlnClassNumber``
  (1-based; with more than one class), ``rlnRandomSubset`` (1/2, the gold-standard half), latents
  as ``rlnCryolensLatent1`` …, and every ``particle_columns`` entry; ``z.npy``: latents ``(N, L)``
  float32 in input order;
- atomic models (when the outputs can decode them, ``decode_models``): ``model.cif``, the model at the mean
  of the latents, and ``models_pc1.cif``, 10 models along their first principal component (5th to 95th
  percentile of its scores), one multi-model mmCIF that ChimeraX and PyMOL open as a trajectory;
- ``metrics.json``: image count, box, pixel size, the recipe's own metrics, the half-map FSC and its
  0.143 resolution, class counts, per-iteration history (``history``; records carrying a ``stage``
  key go to ``<stage>_history``), the FSC against a ``reference`` map (0.5 resolution);
- plots: ``fsc.png``, ``sections.png`` (the map, the ground truth when given, the ``std`` extra volume when
  there is one), ``particles.png``, ``angular_distribution.png``, ``class_sections.png``, per-iteration
  plots of the history (``fsc_iterations.png``, ``resolution_history.png`` or ``resolution.png``,
  ``log_likelihood.png``, ``posterior.png``, ``class_populations.png``; prefixed ``<stage>_`` for staged
  records), ``training_curves.png`` from the engine's ``log.jsonl``;
- ``report.html`` (:mod:`cryolens.analysis.report`) unless ``report=False``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..imaging.ctf import ctf_2d
from ..io.dataset import iterate_batches
from ..io.files import atomic_path
from ..io.mrc import write_volume
from ..io.particles import Particles
from ..io.runfolder import RunFolder
from ..io.star import write_star
from ..metrics.fsc import fsc, resolution_at
from ..methods.registry import MethodOutputs, Recipe
from .latent import pca, pc_traversal


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def write_run(outputs: MethodOutputs, particles: Particles, run: RunFolder | str | os.PathLike,
              recipe: Recipe | None = None, reference: torch.Tensor | None = None, report: bool = True,
              title: str | None = None, metrics: dict | None = None, mask: torch.Tensor | None = None,
              keep_existing: bool = False, plots: bool = True) -> dict:
    """Write the run folder of ``outputs`` (module docstring) into ``run``; returns the metrics.

    particles: the images the recipe was given (their STAR rows are the base of ``particles.star``).
    reference: a ground-truth ``(D, D, D)`` map in the frame of the output (FSC against it, optionally
    under ``mask``). metrics: entries written on top of everything else (e.g. the benchmark's scores).
    keep_existing: start from the ``metrics.json`` already in ``run`` (what ``fit`` wrote as run state,
    a resumed run's numbers), lowest precedence. report / plots: write ``report.html`` / the PNG plots
    (both after the maps, STAR and metrics; a user in a hurry skips them with ``--no-report``).
    """
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    px = float(outputs.pixel_size or particles.pixel_size)
    _write_maps(outputs, run, px)
    if _has_per_image(outputs):
        write_star(run.path("particles.star"), particles_with_outputs(particles, outputs))
    if outputs.latents is not None:
        with atomic_path(run.path("z.npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(outputs.latents, dtype=np.float32), allow_pickle=False)
        if outputs.decode_models is not None:
            write_latent_models(outputs.decode_models, np.asarray(outputs.latents, dtype=np.float32), run.root)
    m = dict(run.read_json("metrics.json")) if keep_existing else {}
    m.update({"n_images": len(particles), "box_size": particles.box_size, "pixel_size": px})
    if recipe is not None:
        m["recipe"] = recipe.name
    m.update(outputs.metrics or {})
    _derived_metrics(outputs, m)
    _history_metrics(outputs.history, m)
    curves = {}
    if m.get("fsc_halfmaps") is not None:
        curves["half-map FSC"] = np.asarray(m["fsc_halfmaps"], dtype=float)
    sections = {"map": _np(outputs.volume)} if outputs.volume is not None else {}
    if reference is not None and outputs.volume is not None:
        ref = reference.float().cpu()
        vol = outputs.volume.float().cpu()
        gt = np.asarray(fsc(vol, ref) if mask is None else fsc(vol * mask, ref * mask))
        m["fsc_vs_ground_truth"] = gt.tolist()
        m["resolution_vs_ground_truth_05_A"] = float(resolution_at(gt, 0.5, px, particles.box_size))
        curves["map vs ground truth"] = gt
        sections["ground truth"] = ref.numpy()
    if "std" in (outputs.extra_volumes or {}):  # a variational map's per-voxel std, beside the map it qualifies
        sections["std (posterior)"] = _np(outputs.extra_volumes["std"])
    m.update(metrics or {})
    run.write_metrics(m)
    if plots:
        _plots(outputs, particles, run, px, curves, sections)
    if report:
        from .report import write_report

        write_report(run.root, title or f"cryolens {recipe.name if recipe else 'run'} — {particles.name}")
    return m


def _write_maps(outputs: MethodOutputs, run: RunFolder, px: float) -> None:
    if outputs.volume is not None:
        write_volume(run.path("map.mrc"), _np(outputs.volume), px)
    if outputs.half_maps is not None:
        write_volume(run.path("half1.mrc"), _np(outputs.half_maps[0]), px)
        write_volume(run.path("half2.mrc"), _np(outputs.half_maps[1]), px)
    if outputs.volumes is not None and (outputs.volume is None or outputs.volumes.shape[0] > 1):
        for k, v in enumerate(outputs.volumes):
            write_volume(run.path(f"class_{k + 1:03d}.mrc"), _np(v), px)
    for key, v in (outputs.extra_volumes or {}).items():
        path = run.path(f"{key}.mrc")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_volume(path, _np(v), px)


def write_latent_models(decode_models, z: np.ndarray, folder: str | os.PathLike, centers: np.ndarray | None = None,
                        n_pcs: int = 1, n: int = 10) -> list[Path]:
    """Atomic models decoded from latents ``z (N, L)`` into ``folder``: ``model.cif`` at their mean,
    ``models_pc<c>.cif`` with ``n`` models along principal component ``c = 1 … n_pcs`` (5th to 95th percentile
    of its scores) and, given ``centers (K, L)`` (e.g. k-means centres), ``models_kmeans.cif``; each a
    multi-model mmCIF. decode_models: ``z (B, L) float32 tensor → B`` models. Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    z = np.asarray(z, dtype=np.float32)
    from ..io.atomic import write_atoms, write_models  # gemmi: only for a run with atomic models

    paths = [write_atoms(folder / "model.cif", decode_models(torch.as_tensor(z.mean(0, keepdims=True)))[0])]
    p = pca(z) if z.shape[0] > 1 else None
    for c in range(min(n_pcs, 0 if p is None else p.components.shape[0])):
        points, _ = pc_traversal(p, c, n)
        paths.append(write_models(folder / f"models_pc{c + 1}.cif",
                                  decode_models(torch.as_tensor(points, dtype=torch.float32))))
    if centers is not None:
        paths.append(write_models(folder / "models_kmeans.cif",
                                  decode_models(torch.as_tensor(np.asarray(centers, dtype=np.float32)))))
    return paths


def _has_per_image(outputs: MethodOutputs) -> bool:
    return any(x is not None for x in (outputs.rotations, outputs.labels, outputs.latents, outputs.half_labels)) \
        or bool(outputs.particle_columns)


def particles_with_outputs(particles: Particles, outputs: MethodOutputs) -> Particles:
    """A copy of ``particles`` carrying what ``outputs`` estimated per image (module docstring)."""
    out = particles.subset(np.arange(len(particles)))
    if outputs.rotations is not None:
        out.rotations = outputs.rotations.detach().float().cpu()
        out.shifts = (outputs.shifts.detach().float().cpu() if outputs.shifts is not None
                      else torch.zeros(len(particles), 2))
    extra = dict(out.extra)
    if outputs.labels is not None and _n_classes(outputs) > 1:
        extra["rlnClassNumber"] = np.asarray(outputs.labels).astype(np.int64) + 1
    if outputs.half_labels is not None:
        extra["rlnRandomSubset"] = np.asarray(outputs.half_labels).astype(np.int64) + 1
    if outputs.latents is not None:
        z = np.asarray(outputs.latents, dtype=np.float64).reshape(len(particles), -1)
        extra.update({f"rlnCryolensLatent{j + 1}": z[:, j] for j in range(z.shape[1])})
    extra.update({k: np.asarray(v) for k, v in (outputs.particle_columns or {}).items()})
    out.extra = extra
    return out


def _n_classes(outputs: MethodOutputs) -> int:
    if outputs.volumes is not None:
        return int(outputs.volumes.shape[0])
    return int(np.max(outputs.labels)) + 1 if outputs.labels is not None and len(outputs.labels) else 1


def _derived_metrics(outputs: MethodOutputs, m: dict) -> None:
    """Numbers read off the outputs, where the recipe did not report them itself."""
    if outputs.half_maps is not None and "fsc_halfmaps" not in m:
        curve = np.asarray(fsc(outputs.half_maps[0].float().cpu(), outputs.half_maps[1].float().cpu()))
        m["fsc_halfmaps"] = curve.tolist()
    if m.get("fsc_halfmaps") is not None and "resolution_halfmap_0143_A" not in m:
        d = 2 * (len(m["fsc_halfmaps"]) - 1)
        m["resolution_halfmap_0143_A"] = float(resolution_at(np.asarray(m["fsc_halfmaps"]), 0.143, m["pixel_size"], d))
    if outputs.half_labels is not None:
        h = np.asarray(outputs.half_labels)
        m.setdefault("n_half1", int((h == 0).sum()))
        m.setdefault("n_half2", int((h == 1).sum()))
    if outputs.volumes is not None and (outputs.volume is None or outputs.volumes.shape[0] > 1):
        k = int(outputs.volumes.shape[0])
        m.setdefault("n_classes", k)
        if outputs.labels is not None:
            m.setdefault("class_counts", np.bincount(np.asarray(outputs.labels), minlength=k).tolist())
    if outputs.latents is not None:
        m.setdefault("latent_dim", int(np.asarray(outputs.latents).reshape(len(outputs.latents), -1).shape[1]))


def split_history(history: list[dict]) -> dict[str, list[dict]]:
    """History records by ``stage`` (``""`` for records without one), in order of first appearance."""
    out: dict[str, list[dict]] = {}
    for rec in history or []:
        out.setdefault(str(rec.get("stage", "")), []).append(rec)
    return out


def _history_metrics(history: list[dict], m: dict) -> None:
    for stage, recs in split_history(history).items():
        key = f"{stage}_history" if stage else "history"
        m.setdefault(key, [{k: v for k, v in r.items() if k not in ("fsc", "stage")} for r in recs])
        if stage:
            continue
        last = recs[-1]
        m.setdefault("iterations", len(recs))
        for name, src in (("final_angular_step_deg", "angular_step_deg"), ("wall_time_s", "elapsed_s"),
                          ("resolution_A", "resolution_A")):
            if src in last:
                m.setdefault(name, last[src])


def _plots(outputs: MethodOutputs, particles: Particles, run: RunFolder, px: float, curves: dict,
           sections: dict) -> None:
    from .plots import plot_fsc, plot_sections  # Pillow; the matplotlib plots below are imported when drawn

    d = particles.box_size
    if curves:
        plot_fsc(curves, px, d, run.path("fsc.png"))
    if sections:
        plot_sections(sections, run.path("sections.png"))
    if outputs.volumes is not None and (outputs.volume is None or outputs.volumes.shape[0] > 1):
        counts = None
        if outputs.labels is not None:
            c = np.bincount(np.asarray(outputs.labels), minlength=outputs.volumes.shape[0])
            counts = c / max(1, c.sum())
        from .class_plots import plot_class_sections

        plot_class_sections(_np(outputs.volumes), run.path("class_sections.png"), counts)
    if outputs.rotations is not None:
        from .em_plots import plot_angular_distribution

        plot_angular_distribution(outputs.rotations.detach().cpu().numpy(), run.path("angular_distribution.png"))
    for stage, recs in split_history(outputs.history).items():
        plot_history(recs, run, px, d, f"{stage}_" if stage else "")
    _plot_particles(particles, run)
    if run.path("log.jsonl").is_file() and not run.path("training_curves.png").exists():
        from .curves import plot_log_curves
        from .report import read_log

        plot_log_curves(read_log(run.path("log.jsonl")), run.path("training_curves.png"))


def plot_history(history: list[dict], run: RunFolder, pixel_size: float, box: int, prefix: str = "") -> None:
    """Per-iteration plots of one stage's records, chosen by the keys the records carry."""
    from .class_plots import plot_class_populations, plot_history as plot_keys
    from .em_plots import plot_fsc_iterations, plot_resolution_history

    if not history or "iteration" not in history[0]:
        return
    has = set().union(*(r.keys() for r in history))
    name = prefix.rstrip("_") + ": " if prefix else ""
    if "fsc" in has:
        plot_fsc_iterations([r for r in history if "fsc" in r], pixel_size, box,
                            run.path(f"{prefix}fsc_iterations.png"))
    if {"resolution_A", "angular_step_deg"} <= has:
        plot_resolution_history(history, run.path(f"{prefix}resolution_history.png"), pixel_size)
    elif "resolution_A" in has:
        plot_keys(history, {"resolution_A": "resolution"}, run.path(f"{prefix}resolution.png"),
                  f"{name}resolution per iteration", "Å")
    if "log_likelihood" in has:
        plot_keys(history, {"log_likelihood": "log-likelihood"}, run.path(f"{prefix}log_likelihood.png"),
                  f"{name}marginal log-likelihood per iteration", "")
    if "mean_max_weight" in has:
        plot_keys(history, {"mean_max_weight": "mean largest posterior weight"}, run.path(f"{prefix}posterior.png"),
                  f"{name}pose certainty per iteration", "")
    if "accuracy_deg" in has:  # auto-refine's pose diagnostic (inference/refine_diag.py)
        plot_keys(history, {"accuracy_deg": "expected angular accuracy", "window_rms_deg": "posterior RMS angle",
                            "local_sigma_deg": "local prior σ", "angular_step_deg": "angular step"},
                  run.path(f"{prefix}pose_accuracy.png"), f"{name}pose accuracy and sampling per iteration", "°")
        plot_keys(history, {"window_mass_mean": "mean posterior mass in the local window",
                            "window_mass_min": "smallest", "significant_at_cap": "significant sets at the cap"},
                  run.path(f"{prefix}pose_window.png"), f"{name}local window and significant sets", "fraction")
    if "class_prior" in has and len(history[-1].get("class_prior") or []) > 1:
        plot_class_populations(history, run.path(f"{prefix}class_populations.png"))


def _plot_particles(particles: Particles, run: RunFolder) -> None:
    """A few particles beside their CTFs (``particles.png``)."""
    from .plots import plot_particles

    if len(particles) == 0:
        return
    idx, images = next(iter(iterate_batches(particles, 6)))
    ctfs = None
    if particles.ctf is not None:
        ctfs = ctf_2d(particles.ctf[torch.as_tensor(idx)], particles.box_size, particles.pixel_size).numpy()
    plot_particles(images.numpy(), ctfs, run.path("particles.png"), [f"particle {i}" for i in idx])


def title_for(command: str, recipe: Recipe | None, source: str | Path) -> str:
    """The report title of a CLI run: ``cryolens COMMAND (RECIPE) — SOURCE``."""
    return f"cryolens {command}" + (f" ({recipe.name})" if recipe is not None else "") + f" — {source}"

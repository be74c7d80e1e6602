"""RECOVAR 1.0.5 as an outside peer: hand it a cryolens dataset, run ``recovar pipeline`` in a
subprocess, read back its per-image embedding, and turn that into maps with cryolens' own code so
that the benchmark scores it like every other method.

RECOVAR (Gilles & Singer 2024; JAX, CPU here) lives in its own virtual environment, found by, in order:
the ``program`` argument, the ``CRYOLENS_RECOVAR`` environment variable (the venv folder or its
``bin/recovar``), ``recovar`` on ``PATH``. Install (outside the repository; Python ≥ 3.11; it pulls
the CPU build of JAX, no CUDA)::

    python3 -m venv ~/.cache/cryolens/recovar-venv
    ~/.cache/cryolens/recovar-venv/bin/pip install recovar==1.0.5
    export CRYOLENS_RECOVAR=~/.cache/cryolens/recovar-venv

Inputs: RECOVAR reads cryoDRGN's formats (``.mrcs`` + pose and CTF pickles), so the inputs are those of
:func:`cryolens.bench.cryodrgn.prepare_inputs`. Its ``latent_coords.npy`` (``model/zdim_K/``) has one row
per input image, in input order.

Maps: ``recovar compute_state`` costs ~5 min per map on this CPU, so the adapter does not ask RECOVAR for
maps. Its embedding is clustered (k-means, ``clusters`` states) and each cluster's images are
back-projected with cryolens' Wiener back-projection (:func:`cryolens.methods.backprojection.backproject`,
the same poses and CTFs); the consensus map is the back-projection of all images. Per-image scoring then
gives every image its cluster's map: what is scored is RECOVAR's *embedding*, with our reconstruction.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..methods.config import RecipeConfig, option
from ..methods.registry import MethodOutputs, Recipe
from .cryodrgn import prepare_inputs, run_measured, venv_program

ENV_VAR = "CRYOLENS_RECOVAR"
INSTALL_HINT = (f"install RECOVAR 1.0.5 in its own venv (python3 -m venv DIR && DIR/bin/pip install "
                f"recovar==1.0.5) and set {ENV_VAR} to that venv")


class RecovarNotFound(RuntimeError):
    """RECOVAR is not installed where cryolens looks for it."""


class RecovarError(RuntimeError):
    """A RECOVAR command failed; the message ends with the tail of its output."""


def recovar_program(program: str | os.PathLike | None = None) -> Path:
    """Path of the ``recovar`` executable (module docstring for where it is looked for)."""
    return venv_program("recovar", ENV_VAR, program, INSTALL_HINT, RecovarNotFound, "RECOVAR")


@dataclass
class RecovarRun:
    """One ``recovar pipeline`` run: output folder, wall-clock seconds, peak resident memory (MiB), CPU
    seconds, the seconds of its stages as it logs them (``{"embedding": s, "total": s, ...}``), the
    command line and its output."""

    outdir: Path
    wall_s: float
    peak_rss_mib: float
    cpu_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    log: str = ""


_STAGE = re.compile(r"standard_recovar_pipeline: ([a-z][a-z ]*?) time: (\d+(?:\.\d+)?)")


def parse_stage_times(log: str) -> dict[str, float]:
    """Seconds per stage from RECOVAR's ``standard_recovar_pipeline: <stage> time: <s>`` log lines."""
    return {m.group(1): float(m.group(2)) for m in _STAGE.finditer(log)}


def run_pipeline(particles: Path, poses: Path, ctf: Path | None, outdir: str | os.PathLike, zdim: int = 4,
                 gpu_budget_gb: float = 3.0, low_memory: bool = True, threads: int = 1,
                 program: str | os.PathLike | None = None, timeout: float | None = None,
                 extra: list[str] | None = None) -> RecovarRun:
    """``recovar pipeline PARTICLES --poses --ctf -o OUTDIR --mask sphere --accept-cpu --zdim ZDIM
    --gpu-budget-gb G [--low-memory-option]`` (the memory flags keep it near 3 GB instead of 17 GB at
    5,000 images of D = 64); log in ``outdir.log``. Raises :class:`RecovarError` with the output's tail."""
    outdir = Path(outdir)
    cmd = [str(recovar_program(program)), "pipeline", str(particles), "--poses", str(poses), "-o", str(outdir),
           "--mask", "sphere", "--accept-cpu", "--zdim", str(int(zdim)), "--gpu-budget-gb", f"{gpu_budget_gb:g}"]
    if ctf is not None:
        cmd += ["--ctf", str(ctf)]
    if low_memory:
        cmd.append("--low-memory-option")
    cmd += [str(a) for a in extra or []]
    wall, rss, cpu, rc, log = run_measured(cmd, outdir.with_name(outdir.name + ".log"), threads, timeout)
    if rc != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise RecovarError(f"{' '.join(cmd)} exited with {rc}:\n{tail}")
    return RecovarRun(outdir, wall, rss, cpu, parse_stage_times(log), cmd, log)


def read_embedding(outdir: str | os.PathLike, zdim: int, n: int | None = None) -> np.ndarray:
    """RECOVAR's per-image latent coordinates ``(N, zdim)`` float32 (``model/zdim_K/latent_coords.npy``),
    one row per input image in input order; ``n``: the number of images expected."""
    path = Path(outdir) / "model" / f"zdim_{int(zdim)}" / "latent_coords.npy"
    if not path.is_file():
        raise InputError(f"{path}: no RECOVAR embedding for zdim {zdim} (did `recovar pipeline` finish?)")
    z = np.load(path).astype(np.float32)
    if z.ndim != 2 or z.shape[1] != zdim or (n is not None and z.shape[0] != n):
        raise InputError(f"{path}: embedding of shape {z.shape}, expected ({n or 'N'}, {zdim})")
    return z


def cluster_maps(particles, z: np.ndarray, clusters: int, seed: int = 0,
                 device=None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """k-means of ``z`` ``(N, L)`` into ``clusters`` states and one Wiener back-projection (cryolens',
    known poses and CTFs) of each state's images: ``(labels (N,), maps (K, D, D, D), consensus (D, D, D))``
    float32, the consensus being the back-projection of all images (also the map of a state of fewer than
    two images, which has no two half-sets to filter by)."""
    from ..analysis.latent import kmeans
    from ..methods.backprojection import backproject

    labels = kmeans(z, clusters, seed=seed).labels
    consensus = backproject(particles, device=device, seed=seed, progress=False).volume
    maps = []
    for k in range(clusters):
        idx = np.nonzero(labels == k)[0]
        maps.append(backproject(particles.subset(idx), device=device, seed=seed, progress=False).volume
                    if len(idx) >= 2 else consensus)
    return labels, torch.stack(maps), consensus


@dataclass(frozen=True)
class RecovarPeerConfig(RecipeConfig):
    """Options of RECOVAR 1.0.5's ``recovar pipeline`` run as a peer."""

    zdim: int = option(4, "latent dimension of RECOVAR's embedding (--zdim)")
    clusters: int = option(10, "k-means states of the embedding, each back-projected by cryolens")
    gpu_budget_gb: float = option(3.0, "RECOVAR's memory plan, GB (--gpu-budget-gb)")
    low_memory: bool = option(True, "RECOVAR's --low-memory-option")
    threads: int = option(1, "OpenMP threads of the RECOVAR process (JAX's own pool is not limited)")
    timeout_s: float = option(3600.0, "stop RECOVAR after this many seconds")


def fit_recovar(particles, known, run, config: RecovarPeerConfig, device=None, progress: bool = True
                ) -> MethodOutputs:
    """The peer's ``fit`` (module docstring): inputs, ``recovar pipeline``, embedding, maps per cluster."""
    if not 1 <= config.clusters <= len(particles) // 2:
        raise InputError(f"recovar: {config.clusters} clusters for {len(particles)} images")
    work = run.path("recovar")
    shutil.rmtree(work / "out", ignore_errors=True)  # a rerun's stale outputs must not be read back
    inputs = prepare_inputs(particles, work / "inputs")
    res = run_pipeline(inputs.particles, inputs.poses, inputs.ctf, work / "out", config.zdim, config.gpu_budget_gb,
                       config.low_memory, config.threads, timeout=config.timeout_s)
    z = read_embedding(work / "out", config.zdim, len(particles))
    labels, maps, mean = cluster_maps(particles, z, config.clusters, config.seed, device)
    metrics = {"recovar_wall_s": res.wall_s, "recovar_peak_rss_mib": res.peak_rss_mib, "recovar_cpu_s": res.cpu_s,
               **{f"recovar_{k.replace(' ', '_')}_s": v for k, v in res.stage_s.items()}}
    return MethodOutputs(pixel_size=particles.pixel_size, volume=mean, volumes=maps, labels=labels, latents=z,
                         metrics=metrics)


ADAPTERS = {"recovar": Recipe(
    name="recovar", fit=fit_recovar, config=RecovarPeerConfig, needs=frozenset({"poses", "ctf"}),
    summary="RECOVAR 1.0.5 recovar pipeline (the original program, CPU JAX); its embedding k-means-clustered, "
            "each cluster back-projected by cryolens",
    heterogeneity="continuous", learned=False, reference="Gilles & Singer 2024 (RECOVAR 1.0.5, its own environment)")}

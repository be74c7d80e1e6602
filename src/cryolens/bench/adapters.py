"""Outside programs as benchmark methods: each adapter is a :class:`~cryolens.methods.registry.Recipe`
(same ``fit`` signature, same ``needs``/``heterogeneity``) kept *outside* the method registry — they
are not cryolens methods, but the runner treats them exactly like one, so they sit in the same table.

- ``relion-reconstruct``: RELION 3.1 ``relion_reconstruct`` from known poses and CTFs.
- ``relion-autorefine``: RELION 3.1 3D auto-refine (``relion_refine_mpi``) for unknown poses,
  starting from the task's initial model (the ground truth low-pass filtered, see the runner).
- ``cryodrgn-4.3`` / ``cryodrgn-4.3-homo`` (optional): cryoDRGN 4.3 itself (``train_vae`` /
  ``train_nn``, poses and CTF known) through the peer adapter :mod:`cryolens.bench.cryodrgn` (runs
  cryoDRGN from its own virtual environment) — present when that module exists and finds the
  ``cryodrgn`` program. A module may also expose ``ADAPTERS`` (``{name: Recipe}``), added as they are.
- ``recovar`` (optional): RECOVAR 1.0.5's ``recovar pipeline`` (poses and CTF known) through
  :mod:`cryolens.bench.recovar`, present when it finds the ``recovar`` program (``CRYOLENS_RECOVAR``).
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..methods.config import RecipeConfig, option
from ..methods.registry import Recipe
from . import relion

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RelionReconstructConfig(RecipeConfig):
    """Options of the ``relion_reconstruct`` adapter (``seed`` draws the random half-sets)."""

    pad: int = option(2, "padding factor of the Fourier insertion (--pad)")
    timeout_s: float = option(3600.0, "stop RELION after this many seconds")


@dataclass(frozen=True)
class RelionRefineConfig(RecipeConfig):
    """Options of the ``relion_refine_mpi --auto_refine`` adapter."""

    initial_model: str = option("", "start map (.mrc); the benchmark runner gives the task's")
    ini_high_A: float = option(30.0, "low-pass of the start map, Å (--ini_high)")
    healpix_order: int = option(1, "initial angular sampling (--healpix_order; 1 = 15°)")
    local_healpix_order: int = option(3, "sampling where local searches start (--auto_local_healpix_order)")
    offset_range_px: float = option(2.0, "translational search range, px (--offset_range)")
    offset_step_px: float = option(1.0, "translational search step, px (--offset_step)")
    particle_diameter_A: float = option(0.0, "mask diameter, Å (0: 90 % of the box)")
    timeout_s: float = option(3600.0, "stop RELION after this many seconds")


@dataclass(frozen=True)
class CryoDRGNPeerHomoConfig(RecipeConfig):
    """Options of cryoDRGN 4.3's ``train_nn`` run as a peer."""

    epochs: int = option(8, "passes over the images")
    batch_size: int = option(8, "images per step")
    dec_layers: int = option(3, "hidden layers of the decoder")
    dec_dim: int = option(256, "width of the decoder's hidden layers")
    threads: int = option(1, "torch threads of the cryoDRGN process")
    timeout_s: float = option(3600.0, "stop cryoDRGN after this many seconds")


@dataclass(frozen=True)
class CryoDRGNPeerConfig(CryoDRGNPeerHomoConfig):
    """Options of cryoDRGN 4.3's ``train_vae`` run as a peer."""

    zdim: int = option(8, "latent dimension")
    checkpoint_every: int = option(4, "epochs between the weights cryoDRGN saves (--checkpoint), each scored "
                                      "against wall time in a benchmark (0: the final weights only)")
    enc_layers: int = option(3, "hidden layers of the encoder")
    enc_dim: int = option(256, "width of the encoder's hidden layers")


RELION_ADAPTERS = {
    "relion-reconstruct": Recipe(
        name="relion-reconstruct", fit=relion.fit_relion_reconstruct,
        summary="RELION 3.1 relion_reconstruct --ctf (known poses), half maps by --subset",
        config=RelionReconstructConfig, needs=frozenset({"poses", "ctf"}),
        heterogeneity="homogeneous", reference="Scheres 2012 (RELION 3.1)"),
    "relion-autorefine": Recipe(
        name="relion-autorefine", fit=relion.fit_relion_refine,
        summary="RELION 3.1 3D auto-refine (relion_refine_mpi, gold-standard halves) from a low-passed initial model",
        config=RelionRefineConfig,
        needs=frozenset({"ctf"}), heterogeneity="homogeneous", reference="Scheres 2012 (RELION 3.1 auto-refine)"),
}

RELION_PROGRAMS = {"relion-reconstruct": ("relion_reconstruct",), "relion-autorefine": ("relion_refine_mpi", "mpirun")}


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name != module:
            log.warning("%s could not be imported: %s", module, e)
        return None


_PEER_FUNCTIONS = ("cryodrgn_program", "prepare_inputs", "train_vae", "train_nn", "read_latents", "eval_vol",
                   "read_maps")


def _peer_fit(mod, heterogeneous: bool):
    """The ``fit`` of the cryoDRGN peer adapter (``mod`` = :mod:`cryolens.bench.cryodrgn`)."""

    def fit(particles, known, run, config, device=None, progress=True):
        import torch

        from ..methods.registry import MethodOutputs

        t0 = time.time()
        work = run.path("cryodrgn")
        inputs = mod.prepare_inputs(particles, work / "inputs")
        common = dict(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                      threads=config.threads, timeout=config.timeout_s)
        px = particles.pixel_size
        if not heterogeneous:
            res = mod.train_nn(inputs, work / "train", layers=config.dec_layers, dim=config.dec_dim, **common)
            vol = mod.read_maps(work / "train" / "reconstruct.mrc")[0]
            return MethodOutputs(pixel_size=px, volume=torch.from_numpy(vol),
                                 metrics={"cryodrgn_wall_s": res.wall_s, "cryodrgn_peak_rss_mib": res.peak_rss_mib})
        every = config.checkpoint_every
        res = mod.train_vae(inputs, work / "train", zdim=config.zdim, enc_layers=config.enc_layers,
                            enc_dim=config.enc_dim, dec_layers=config.dec_layers, dec_dim=config.dec_dim,
                            extra=["--checkpoint", str(every)] if every > 0 else None, **common)
        if every > 0 and hasattr(mod, "epoch_stamps"):
            stamps = {e: t for e, t in mod.epoch_stamps(res.log).items() if e < config.epochs}  # last = final
            _write_peer_snapshots(run.path("snapshots"), work / "train", stamps, t0)
        out = _vae_outputs(mod, work, px, config.threads)
        out.metrics = {"cryodrgn_wall_s": res.wall_s, "cryodrgn_peak_rss_mib": res.peak_rss_mib}
        return out

    def finish_snapshot(particles, known, run_dir, config, record, device=None):
        """The outputs of the weights cryoDRGN saved after epoch ``record["epoch"]`` (the timeline)."""
        return _vae_outputs(mod, Path(run_dir) / "cryodrgn", particles.pixel_size, config.threads, record["epoch"])

    if heterogeneous:
        fit.finish_snapshot = finish_snapshot
    return fit


def _vae_outputs(mod, work: Path, px: float, threads: int, epoch: int | None = None):
    """A ``train_vae`` run's outputs (final, or of the weights saved after ``epoch``): latents, the map at
    their mean, and a decoder running ``cryodrgn eval_vol``."""
    import numpy as np
    import torch

    from ..methods.registry import MethodOutputs

    at = {} if epoch is None else {"epoch": epoch}
    z = mod.read_latents(work / "train", **at)
    calls = [0]

    def decode(zz: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        paths = mod.eval_vol(work / "train", zz.detach().cpu().numpy(), work / f"eval{epoch or ''}_{calls[0]:03d}",
                             px, threads=threads, **at)
        return torch.from_numpy(mod.read_maps(paths)).to(zz.device)

    mean = decode(torch.as_tensor(np.asarray(z).mean(0, keepdims=True)))[0]
    return MethodOutputs(pixel_size=px, volume=mean, latents=z, decode=decode)


def _write_peer_snapshots(folder: Path, train: Path, stamps: dict[int, float], t0: float) -> None:
    """``folder/snapshots.json`` (the format of :mod:`cryolens.inference.snapshots`) for the epochs whose
    weights cryoDRGN saved (``train/weights.E.pkl``), at the wall time its log gives for their end."""
    import json

    recs = [{"file": f"weights.{e}.pkl", "elapsed_s": max(0.0, t - t0), "epoch": e, "step": None}
            for e, t in sorted(stamps.items()) if (train / f"weights.{e}.pkl").is_file()]
    if recs:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots.json").write_text(json.dumps(recs, indent=1) + "\n")


def peer_adapters(mod) -> dict[str, Recipe]:
    """cryoDRGN 4.3 run through the peer module ``mod`` (its functions :data:`_PEER_FUNCTIONS`),
    as two adapters; ``{}`` when the module lacks them."""
    if mod is None or not all(hasattr(mod, f) for f in _PEER_FUNCTIONS):
        return {}
    ref = "Zhong et al. 2021 (cryoDRGN 4.3, run in its own environment)"
    return {
        "cryodrgn-4.3": Recipe(name="cryodrgn-4.3", fit=_peer_fit(mod, True),
                               summary="cryoDRGN 4.3 train_vae (the original program), poses and CTF known",
                               config=CryoDRGNPeerConfig,
                               needs=frozenset({"poses", "ctf"}), heterogeneity="continuous", learned=True,
                               reference=ref),
        "cryodrgn-4.3-homo": Recipe(name="cryodrgn-4.3-homo", fit=_peer_fit(mod, False),
                                    summary="cryoDRGN 4.3 train_nn (the original program), poses and CTF known",
                                    config=CryoDRGNPeerHomoConfig, needs=frozenset({"poses", "ctf"}),
                                    heterogeneity="homogeneous", learned=True, reference=ref),
    }


def _installed(find_program) -> bool:
    try:
        find_program()
        return True
    except Exception:  # not installed: the adapter is simply absent
        return False


def _peer_available(mod) -> bool:
    return _installed(mod.cryodrgn_program)


def adapters(available_only: bool = True) -> dict[str, Recipe]:
    """All benchmark adapters by name; with ``available_only`` those whose programs are installed."""
    import shutil

    out: dict[str, Recipe] = {}
    for name, rec in RELION_ADAPTERS.items():
        if not available_only or all(shutil.which(p) for p in RELION_PROGRAMS[name]):
            out[name] = rec
    mod = _optional("cryolens.bench.cryodrgn")
    if mod is not None and (not available_only or _peer_available(mod)):
        out.update(peer_adapters(mod))
    if mod is not None:
        out.update(dict(getattr(mod, "ADAPTERS", {})))
    rec = _optional("cryolens.bench.recovar")
    if rec is not None and (not available_only or _installed(rec.recovar_program)):
        out.update(rec.ADAPTERS)
    return out

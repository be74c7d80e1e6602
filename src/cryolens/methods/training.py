"""Options and wiring every recipe trained on the one engine shares (not a recipe itself).

:class:`TrainingConfig` holds the engine's options (:class:`~cryolens.inference.engine.TrainConfig`) and
the data normalisation; a learned recipe's options subclass it and re-declare a field to change its
published default. :func:`train` runs the engine and returns the log records; :func:`run_summary` turns
them into the metrics and the per-epoch history of :class:`~cryolens.methods.registry.MethodOutputs`;
:func:`latent_outputs` and :func:`write_model_json` finish a cryoDRGN-family run (``cryodrgn*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inference.engine import Trainer, read_log
from ..inference.latent_model import CryoDRGN, infer_latents
from ..inference.training import engine_config, epoch_history, training_summary
from ..io.particles import Particles
from .config import RecipeConfig, as_dict, option
from .registry import MethodOutputs


@dataclass(frozen=True)
class TrainingConfig(RecipeConfig):
    """The one engine's options (docs/ARCHITECTURE.md: the training engine)."""

    epochs: int = option(20, "passes over the data (epochs)")
    batch_size: int = option(8, "images per optimiser step, over all DDP processes")
    lr: float = option(1e-4, "learning rate of Adam / AdamW")
    weight_decay: float = option(0.0, "weight decay of the optimiser")
    optimizer: str = option("adam", "adam or adamw")
    amp: bool = option(True, "mixed precision on CUDA (bf16, else fp16 with a gradient scaler)")
    cpu_amp: bool = option(False, "bf16 autocast on a CPU with native bfloat16 (ignored elsewhere)")
    num_workers: int = option(0, "DataLoader worker processes")
    epoch_images: int = option(0, "images drawn per epoch (0 = all)")
    resume: bool = option(False, "continue from the run folder's checkpoint.pt")
    norm_images: int = option(1000, "images sampled to measure the data scale (normalisation)")


def train(model: torch.nn.Module, particles: Particles, run, config: TrainingConfig, device, progress: bool,
          strategies=()) -> Trainer:
    """Train ``model`` on the engine into ``run`` (resumable: ``config.resume``); returns the trainer."""
    trainer = Trainer(model, particles, engine_config(config), run.root, device, progress, strategies)
    trainer.fit(resume=config.resume)
    return trainer


def run_summary(run, config: TrainingConfig) -> tuple[dict, list[dict]]:
    """``(metrics, history)`` of a finished run from its ``log.jsonl``: ``epochs``, ``final_loss`` and
    every other term of the last step, mean ``images_per_s``; one history record per epoch."""
    records = read_log(run.path("log.jsonl"))
    return {"epochs": config.epochs, **training_summary(records)}, epoch_history(records)


def write_model_json(run, model: CryoDRGN, particles: Particles, config, recipe: str) -> None:
    run.write_json("model.json", {"recipe": recipe, "mode": model.mode, "box_size": particles.box_size,
                                  "pixel_size": particles.pixel_size, "n_images": len(particles),
                                  "config": as_dict(config)})


def latent_outputs(model: CryoDRGN, particles: Particles, run, config: TrainingConfig, device,
                   fill=None) -> MethodOutputs:
    """After training a cryoDRGN model (rank 0): latents (``fill``: their batches' searched poses), the
    map at their mean, the training summary; returns the :class:`MethodOutputs`."""
    model.eval()
    z = infer_latents(model, particles, device, fill=fill)
    z_mean = None if z is None else torch.as_tensor(z.mean(0, keepdims=True), device=device)
    volume = model.field.render(z_mean)[0].cpu()
    summary, history = run_summary(run, config)
    metrics = {"epochs": summary["epochs"], "final_loss": summary["final_loss"],
               "final_mse": summary.get("final_mse"), "images_per_s": summary["images_per_s"]}
    field = model.field

    def decode(zb: torch.Tensor | None) -> torch.Tensor:
        return field.render(None if zb is None else zb.to(device))

    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, latents=z,
                         decode=decode if model.zdim else None, metrics=metrics, history=history)

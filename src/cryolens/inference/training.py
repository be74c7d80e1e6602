"""What every recipe trained on the one engine shares: the engine settings read from a recipe's options,
the data scale measured on a sample of images, and the summary of a run's log.

A recipe's options object (a :class:`~cryolens.methods.config.RecipeConfig` or any object with these
attributes) carries the engine settings under :class:`~cryolens.inference.engine.TrainConfig`'s names:
``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``optimizer``, ``amp``, ``cpu_amp``, ``seed``,
``num_workers``, ``epoch_images``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..io.dataset import read_images
from ..io.particles import Particles
from .engine import TrainConfig
from .losses import centered_hartley


def engine_config(options: Any) -> TrainConfig:
    """The engine settings (:class:`TrainConfig`) from a recipe's options (module docstring)."""
    return TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                       weight_decay=options.weight_decay, optimizer=options.optimizer, amp=options.amp,
                       cpu_amp=options.cpu_amp, seed=options.seed, num_workers=options.num_workers,
                       epoch_images=options.epoch_images)


def sample_images(particles: Particles, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` randomly chosen images ``(n, D, D)`` float32 (seeded; for data normalisation)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(particles), size=min(n, len(particles)), replace=False))
    return read_images(particles, idx)


def hartley_std(particles: Particles, n: int = 1000, seed: int = 0) -> float:
    """Std of the Hartley transforms of up to ``n`` randomly chosen images (cryoDRGN's normalisation)."""
    return float(centered_hartley(sample_images(particles, n, seed)).std())


def training_summary(records: list[dict]) -> dict:
    """``final_loss`` (and every other term of the last step, as ``final_<term>``) and the mean
    ``images_per_s`` of the epochs, from a run's ``log.jsonl`` records (``None`` where there are none)."""
    steps = [r for r in records if not r.get("epoch_end")]
    ends = [r for r in records if r.get("epoch_end")]
    last = {f"final_{k}": v for k, v in steps[-1].items() if k not in ("epoch", "step")} if steps else {}
    return {"final_loss": None, **last,
            "images_per_s": float(np.mean([r["images_per_s"] for r in ends])) if ends else None}


def epoch_history(records: list[dict]) -> list[dict]:
    """One record per epoch from a run's ``log.jsonl`` records: ``epoch``, ``step``, ``elapsed_s`` (the
    epoch's seconds), ``images_per_s`` and the mean of every loss term over the epoch's steps."""
    out, steps = [], []
    for r in records:
        if not r.get("epoch_end"):
            steps.append(r)
            continue
        terms = {k for s in steps for k in s if k not in ("epoch", "step")}
        means = {k: float(np.mean([s[k] for s in steps if k in s])) for k in sorted(terms)}
        out.append({"epoch": r["epoch"], "step": r["step"], "elapsed_s": r.get("seconds"),
                    "images_per_s": r.get("images_per_s"), **means})
        steps = []
    return out

"""The options of FSTdiff's variational volume ``q(V)`` (docs/METHODS.md, "FSTdiff"), shared by the recipes
that offer it: ``fstdiff`` (its volume) and ``cryoposenet`` (``variational_volume=true``, with the pose
encoder's poses: :class:`~cryolens.inference.amortized_variational.AmortizedVariationalVolume`). Not a
recipe itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import RecipeConfig, option


@dataclass(frozen=True)
class VariationalVolumeOptions(RecipeConfig):
    """``q(V)``'s start, prior, noise, Monte Carlo and output options."""

    var_lr: float = option(0.1, "Adam learning rate of q(V)'s log-variances and the noise (0 = lr)")
    init_logvar: float = option(-2.0, "starting log(variance / prior variance) of each Fourier voxel")
    learn_prior: bool = option(True, "learn the per-shell prior variance (empirical Bayes)")
    learn_noise: bool = option(True, "learn the per-shell noise power")
    samples: int = option(1, "Monte Carlo draws per step (of V, and of R, t where they are distributions)")
    expectation: Literal["sampled", "analytic"] = option("sampled", "E over q(V): reparametrised draws or closed form")
    std_samples: int = option(32, "draws of q(V) for the real-space std map")

"""The one registry of named recipes.

A recipe is a named composition of parts (volume parametrization × inference per hidden variable ×
loss) with its published defaults. Everything that lists or runs methods — the CLI
(``cryolens train NAME``, ``refine``, ...), the benchmark runner, the docs — reads this registry,
so a new method is one :func:`register` call beside its composition, never a new command or loop.

Every recipe exposes the same entry point::

    fit(particles, known, run, config, device, progress) -> MethodOutputs

``particles`` is a :class:`~cryolens.io.particles.Particles`; what it holds beyond the images is only
what ``known`` says is known (a runner strips the rest before the call). ``run`` is the
:class:`~cryolens.io.runfolder.RunFolder` the recipe writes into; ``config`` is the recipe's
``defaults`` updated with the caller's overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

HETEROGENEITY = ("homogeneous", "discrete", "continuous")


@dataclass(frozen=True)
class Known:
    """Which nuisance variables a method is given: ``poses`` (rotations and shifts) and ``ctf``."""

    poses: bool = True
    ctf: bool = True


@dataclass
class MethodOutputs:
    """What a recipe returns; every field a method does not estimate stays ``None``.

    volume: ``(D, D, D)`` float32 consensus map, real space ``[z, y, x]``.
    half_maps: two ``(D, D, D)`` maps from independent halves (gold standard), if made.
    volumes: ``(K, D, D, D)`` one map per discrete class.
    rotations: ``(N, 3, 3)`` estimated poses, image frame → volume frame. shifts: ``(N, 2)`` px.
    labels: ``(N,)`` int64 estimated class per image. latents: ``(N, L)`` float32 estimated ``z``.
    decode: ``z (B, L) float32 → (B, D, D, D)`` maps, for continuous models (per-image maps).
    pixel_size: Å/px. metrics: numbers the method measured about itself (resolution, losses, time).
    """

    pixel_size: float
    volume: torch.Tensor | None = None
    half_maps: tuple[torch.Tensor, torch.Tensor] | None = None
    volumes: torch.Tensor | None = None
    rotations: torch.Tensor | None = None
    shifts: torch.Tensor | None = None
    labels: np.ndarray | None = None
    latents: np.ndarray | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    metrics: dict = field(default_factory=dict)


FitFn = Callable[..., MethodOutputs]


@dataclass(frozen=True)
class Recipe:
    """A named method: its ``fit``, its published ``defaults``, what it ``needs`` to be known
    (a subset of ``{"poses", "ctf"}``), the heterogeneity it models, and the paper it follows."""

    name: str
    fit: FitFn
    summary: str
    defaults: dict = field(default_factory=dict)
    needs: frozenset[str] = frozenset()
    heterogeneity: str = "homogeneous"
    learned: bool = False
    reference: str = ""

    def __post_init__(self):
        if self.heterogeneity not in HETEROGENEITY:
            raise ValueError(f"recipe {self.name}: heterogeneity must be one of {HETEROGENEITY}")
        unknown = set(self.needs) - {"poses", "ctf"}
        if unknown:
            raise ValueError(f"recipe {self.name}: unknown needs {sorted(unknown)}")

    def accepts(self, known: Known) -> bool:
        """True when every variable this recipe needs is known."""
        return ("poses" not in self.needs or known.poses) and ("ctf" not in self.needs or known.ctf)

    def config(self, overrides: dict[str, Any] | None = None) -> dict:
        """The defaults updated with ``overrides``; an unknown key is an error naming the recipe."""
        cfg = dict(self.defaults)
        for k, v in (overrides or {}).items():
            if k not in cfg:
                raise KeyError(f"recipe {self.name} has no option {k!r} (options: {', '.join(sorted(cfg))})")
            cfg[k] = v
        return cfg


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe, replace: bool = False) -> Recipe:
    """Add ``recipe`` under its name (an existing name is an error unless ``replace``)."""
    if recipe.name in _REGISTRY and not replace:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _REGISTRY[recipe.name] = recipe
    return recipe


def unregister(name: str) -> None:
    """Remove a recipe (tests register throw-away recipes)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is a ``KeyError`` listing the known ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"no recipe named {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def recipes() -> dict[str, Recipe]:
    """All registered recipes by name (the built-in ones are imported first)."""
    _load_builtin()
    return dict(_REGISTRY)


def _load_builtin() -> None:
    # importing the package registers every built-in recipe (each module calls register at import)
    import cryolens.methods  # noqa: F401

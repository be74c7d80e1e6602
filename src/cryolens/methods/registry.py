"""The one registry of named recipes.

A recipe is a named composition of parts (volume parametrization × inference per hidden variable ×
loss) with its published defaults. Everything that lists or runs methods — the CLI
(``cryolens train NAME``, ``refine``, ...), the benchmark runner, the docs — reads this registry,
so a new method is one :func:`register` call beside its composition, never a new command or loop.

Every recipe exposes the same entry point::

    fit(particles, known, run, config, device, progress) -> MethodOutputs

``particles`` is a :class:`~cryolens.io.particles.Particles`; what it holds beyond the images is only
what ``known`` says is known (a runner strips the rest before the call). ``run`` is the
:class:`~cryolens.io.runfolder.RunFolder` the recipe may write run state into (checkpoints, logs);
``config`` is the recipe's :class:`~cryolens.methods.config.RecipeConfig` instance
(:meth:`Recipe.config`). ``fit`` returns everything in :class:`MethodOutputs`; the one writer
(:func:`cryolens.analysis.writer.write_run`) turns it into the run folder.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import OptionSpec, RecipeConfig, as_dict, build_config, option_specs

if TYPE_CHECKING:  # annotations only: listing the recipes imports no torch
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
    history: one record per iteration or epoch (``iteration``/``epoch``, ``elapsed_s``, ``resolution``,
    ``angular_step_deg``, ``fsc`` (list), ``class_prior`` (list) ...); a multi-stage recipe tags each
    record with ``stage`` (e.g. ``"abinit"``, ``"refine"``): the writer then writes ``<stage>_history``
    in metrics.json and ``<stage>_*.png`` plots (:mod:`cryolens.analysis.writer`).
    half_labels: ``(N,)`` 0/1 gold-standard half of each image, if the method split the data.
    extra_volumes: more maps, each written as ``<key>.mrc`` (a key may contain one ``/``).
    particle_columns: more per-image STAR columns ``{rlnName: (N,) array}``.
    decode_models: for models built from an atomic model, ``z (B, L) float32 → B`` moved models
    (:class:`~cryolens.io.atomic.Atoms`, every atom moved with its Gaussian); the writer writes the model at the
    mean ``z`` and a traversal along the first principal component of the latents.
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
    history: list[dict] = field(default_factory=list)
    half_labels: np.ndarray | None = None
    extra_volumes: dict[str, torch.Tensor] = field(default_factory=dict)
    particle_columns: dict[str, np.ndarray] = field(default_factory=dict)
    decode_models: Callable[[torch.Tensor], list] | None = None


FitFn = Callable[..., MethodOutputs]


class Recipe:
    """A named method: its ``fit``, its options (a :class:`~cryolens.methods.config.RecipeConfig`
    subclass ``config`` with per-recipe ``defaults`` overriding the class's), what it ``needs`` to be
    known (a subset of ``{"poses", "ctf"}``), the heterogeneity it models, and the paper it follows.

    ``defaults`` holds every option's effective default (class default, then the recipe's override), so
    ``build_config(config_class, name, defaults, overrides)`` is the recipe's config. A recipe that declares
    no config class has the base options only (``seed``). ``fit`` and ``config`` may be given as
    ``"module:attribute"`` (``".backprojection:fit"``: a module of this package); the module is then imported
    when the recipe is first used (its fit, config or options), so that registering the built-in recipes
    imports none of them.
    """

    def __init__(self, name: str, fit: FitFn | str, summary: str, config: type[RecipeConfig] | str | None = None,
                 defaults: dict | None = None, needs: frozenset[str] = frozenset(),
                 heterogeneity: str = "homogeneous", learned: bool = False, reference: str = ""):
        self.name, self.summary = name, summary
        self.needs, self.heterogeneity = frozenset(needs), heterogeneity
        self.learned, self.reference = learned, reference
        if heterogeneity not in HETEROGENEITY:
            raise ValueError(f"recipe {name}: heterogeneity must be one of {HETEROGENEITY}")
        unknown = set(self.needs) - {"poses", "ctf"}
        if unknown:
            raise ValueError(f"recipe {name}: unknown needs {sorted(unknown)}")
        self._fit, self._config, self._overrides = fit, config or RecipeConfig, defaults
        self._defaults: dict | None = None
        if not isinstance(fit, str) and not isinstance(self._config, str):
            self._resolve()  # given as objects: checked now (a lazy recipe is checked on first use)

    def _resolve(self) -> None:
        """Import what was named as ``"module:attribute"`` (on first use: listing the registry imports no
        recipe module) and compute the effective defaults."""
        if self._defaults is not None:
            return
        if isinstance(self._fit, str):
            self._fit = _named(self._fit)
        if isinstance(self._config, str):
            self._config = _named(self._config)
        self._defaults = as_dict(build_config(self._config, self.name, self._overrides))

    @property
    def fit(self) -> FitFn:
        """``fit(particles, known, run, config, device, progress) -> MethodOutputs`` (imported on first use)."""
        self._resolve()
        return self._fit

    @property
    def config_class(self) -> type[RecipeConfig]:
        """The recipe's :class:`~cryolens.methods.config.RecipeConfig` subclass (imported on first use)."""
        self._resolve()
        return self._config

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option's effective default: the class's, then the recipe's override."""
        self._resolve()
        return self._defaults

    def __repr__(self) -> str:
        config = self._config if isinstance(self._config, str) else self._config.__name__
        return f"Recipe(name={self.name!r}, config={config}, heterogeneity={self.heterogeneity!r})"

    def accepts(self, known: Known) -> bool:
        """True when every variable this recipe needs is known."""
        return ("poses" not in self.needs or known.poses) and ("ctf" not in self.needs or known.ctf)

    def config(self, overrides: dict[str, Any] | None = None) -> RecipeConfig:
        """The recipe's options with ``overrides`` applied (text or JSON values are coerced).

        An unknown option or a value of the wrong type is an :class:`InputError` naming the recipe and
        the field.
        """
        return build_config(self.config_class, self.name, self.defaults, overrides)

    def options(self) -> dict[str, OptionSpec]:
        """Every option with the recipe's effective default, type and doc, in declaration order."""
        specs = option_specs(self.config_class)
        return {k: dataclasses.replace(s, default=self.defaults[k]) for k, s in specs.items()}


_REGISTRY: dict[str, Recipe] = {}


def _named(spec: str) -> Any:
    """The object ``"module:attribute"`` names, importing the module (``".name"``: in this package)."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module, __package__), attribute)


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

"""Command-line flags generated from a recipe's typed options (:mod:`cryolens.methods.config`).

Every option ``name`` of a recipe becomes ``--name-with-dashes`` (a ``bool`` option also gets
``--no-name``), with the option's doc and the recipe's default in its help; historic flag names are
kept as aliases. ``--set KEY=VALUE`` (repeatable) reaches every option too. Values stay text until
:meth:`~cryolens.methods.registry.Recipe.config` coerces them, so a mistyped value is one
:class:`~cryolens.errors.InputError` line naming the recipe and the option.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable

from ..errors import InputError
from ..methods.config import parse_text
from ..methods.registry import Recipe

DEST = "opt__"  # prefix of the generated flags' attribute names


def flag(name: str) -> str:
    """The flag of option ``name`` (underscores → dashes)."""
    return "--" + name.replace("_", "-")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every command that fits a recipe has: ``--device``, ``--quiet``, ``--no-report``."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="write the maps, STAR and metrics.json only "
                   "(no PNG plots, no report.html)")


def add_recipe_options(p: argparse.ArgumentParser, recipes: Recipe | Iterable[Recipe],
                       aliases: dict[str, list[str]] | None = None, required: Iterable[str] = (),
                       title: str | None = None) -> None:
    """Add one flag per option of ``recipes`` (the union; the first recipe's doc and default are shown),
    plus ``--set``. ``aliases``: extra flags of an option (historic names); ``required``: options the
    command needs on its command line. Options whose flag the parser already has are left to ``--set``."""
    recipes = [recipes] if isinstance(recipes, Recipe) else list(recipes)
    specs: dict = {}
    for r in recipes:
        for name, spec in r.options().items():
            specs.setdefault(name, (spec, r))
    names = "/".join(r.name for r in recipes)
    group = p.add_argument_group(title or f"options of {names} (cryolens recipes {recipes[0].name})")
    taken = set(p._option_string_actions)
    for name, (spec, _) in specs.items():
        flags = [f for f in [flag(name), *(aliases or {}).get(name, [])] if f not in taken]
        if not flags:
            continue
        defaults = {r.name: r.defaults[name] for r in recipes if name in r.defaults}
        default = spec.default if len(set(map(repr, defaults.values()))) == 1 else \
            ", ".join(f"{v} for {k}" for k, v in defaults.items())
        help_text = f"{spec.doc or name} (default: {default})".replace("%", "%%")
        kw = dict(dest=DEST + name, default=None, help=help_text)
        if spec.type is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        else:
            metavar = spec.type_name.upper().replace(" ", "_")
            if typing.get_origin(spec.type) is typing.Literal:
                metavar = "{" + ",".join(map(str, typing.get_args(spec.type))) + "}"
            group.add_argument(*flags, metavar=metavar, required=name in required, **kw)
        taken.update(flags)
    add_set_arg(p)


def add_set_arg(p: argparse.ArgumentParser, example: str = "KEY=VALUE") -> None:
    """``--set KEY=VALUE``, repeatable (values JSON when they parse, else text)."""
    if "--set" not in p._option_string_actions:
        p.add_argument("--set", action="append", default=[], metavar=example,
                       help="set any recipe option, e.g. --set healpix_order=3 (repeatable; values are JSON "
                            "when they parse, else text)")


def parse_set(items: Iterable[str], what: str = "--set", dotted: bool = False) -> dict:
    """``["k=v", ...]`` → ``{k: value}`` (``-`` in keys read as ``_``; values by :func:`parse_text`).
    ``dotted``: keys are ``METHOD.OPTION`` → ``{method: {option: value}}``."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or (dotted and "." not in key):
            raise InputError(f"{what} {item}: expected {'METHOD.OPTION' if dotted else 'KEY'}=VALUE")
        if dotted:
            method, option = key.split(".", 1)
            out.setdefault(method.strip(), {})[option.strip().replace("-", "_")] = parse_text(value)
        else:
            out[key.replace("-", "_")] = parse_text(value)
    return out


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The options set on the command line: generated flags, then ``--set`` (later wins)."""
    out = {k[len(DEST):]: v for k, v in vars(args).items() if k.startswith(DEST) and v is not None}
    out.update(parse_set(getattr(args, "set", []) or []))
    return out


def recipe_config(recipe: Recipe, args: argparse.Namespace, extra: dict | None = None):
    """``recipe.config`` of the command line's options (``extra`` first, the command line over it)."""
    return recipe.config({**(extra or {}), **recipe_overrides(args)})

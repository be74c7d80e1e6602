"""Typed recipe options: every recipe's options are one frozen dataclass whose defaults are written once.

A recipe module declares its options as a subclass of :class:`RecipeConfig`, each field made with
:func:`option` (its default and a one-line doc that names the unit)::

    @dataclass(frozen=True)
    class Refine3DConfig(RecipeConfig):
        lowpass: float = option(60.0, "initial low-pass of the start map, Å")

The CLI flags, ``--set KEY=VALUE`` and the benchmark's options are generated from these fields
(:func:`option_specs`), and every value that comes from text or JSON goes through :func:`build_config`,
which coerces it to the field's type or raises one :class:`~cryolens.errors.InputError` line naming the
recipe and the field.

Field types understood: ``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[int, ...]``,
``tuple[float, ...]``, ``tuple[str, ...]`` and ``Literal[...]`` (a fixed set of choices).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InputError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", ""}


def option(default: Any, doc: str) -> Any:
    """A recipe option: its ``default`` and a one-line ``doc`` (with the unit, if it has one)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RecipeConfig:
    """Base of every recipe's options."""

    seed: int = option(0, "seed of every random choice of the run")


@dataclass(frozen=True)
class OptionSpec:
    """One option of a recipe as the CLI and the docs show it: name, type, default and doc."""

    name: str
    type: Any
    default: Any
    doc: str

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def option_specs(cls: type[RecipeConfig]) -> dict[str, OptionSpec]:
    """The options of a config class, in declaration order (base-class fields first)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = OptionSpec(f.name, hints[f.name], default, f.metadata.get("doc", ""))
    return out


def build_config(cls: type[RecipeConfig], recipe: str, defaults: dict | None = None,
                 overrides: dict | None = None) -> RecipeConfig:
    """An instance of ``cls``: its defaults, then the recipe's ``defaults``, then ``overrides``.

    Values may be text (``"3"``, ``"true"``, ``"1,2"``), JSON-decoded values or already typed; each is
    coerced to its field's type. An unknown option or a value of the wrong type raises
    :class:`InputError` naming ``recipe`` and the field.
    """
    specs = option_specs(cls)
    values: dict[str, Any] = {}
    for source in (defaults or {}), (overrides or {}):
        for key, value in source.items():
            if key not in specs:
                known = ", ".join(specs)
                raise InputError(f"recipe {recipe}: no option {key!r} (options: {known})")
            values[key] = coerce(value, specs[key].type, f"recipe {recipe}: option {key}")
    return cls(**values)


def as_dict(config: RecipeConfig) -> dict[str, Any]:
    """The options of ``config`` as a plain ``{name: value}`` dict (tuples kept), for JSON and logs."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def parse_text(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (``3``, ``true``, ``[1, 2]``, ``null``), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce(value: Any, typ: Any, what: str) -> Any:
    """``value`` converted to the type ``typ`` (see the module docstring), or an InputError about ``what``."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        if len(inner) == 1:
            return coerce(value, inner[0], what)
        for a in inner:
            try:
                return coerce(value, a, what)
            except InputError:
                continue
        raise InputError(f"{what}: {value!r} is not {_type_name(typ)}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise InputError(f"{what}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = parse_text(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(coerce(v, args[0], what) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE or s in _FALSE:
            return s in _TRUE
    elif typ in (int, float):
        number = _number(value)
        if number is not None and (typ is float or float(number).is_integer()):
            return typ(number)
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is typing.Any:
        return value
    raise InputError(f"{what}: {value!r} is not {_type_name(typ)}")


def _number(value: Any) -> int | float | None:
    """``value`` as a number when it is one (not a bool) or is the text of one, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value.strip())
            except ValueError:
                continue
    return None


def _type_name(typ: Any) -> str:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + "|".join(map(str, args))
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if typ is type(None):
        return "none"
    return getattr(typ, "__name__", str(typ))

"""Typed recipe options (methods/config.py): text and JSON values are coerced to each field's declared type,
and a wrong one is one line naming the recipe and the option."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import Literal

import pytest

from cryolens.errors import InputError
from cryolens.methods.config import RecipeConfig, as_dict, build_config, coerce, option, option_specs, parse_text


@dataclass(frozen=True)
class _Toy(RecipeConfig):
    epochs: int = option(3, "passes over the data")
    lowpass: float | None = option(None, "start low-pass, Å")
    sizes: tuple[int, ...] = option((8, 16), "layer widths")
    mode: Literal["posterior", "modal"] = option("posterior", "pose inference")
    amp: bool = option(False, "mixed precision")
    name: str = option("x", "a label")


def test_defaults_then_recipe_defaults_then_overrides():
    """The class defaults are overridden by a recipe's own defaults, and those by the caller's values."""
    c = build_config(_Toy, "toy", {"epochs": 5, "mode": "modal"}, {"epochs": 7})
    assert (c.epochs, c.mode, c.seed, c.sizes) == (7, "modal", 0, (8, 16))
    with pytest.raises(FrozenInstanceError):
        c.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize("field,text,expected", [
    ("epochs", "12", 12), ("epochs", 4.0, 4), ("lowpass", "20", 20.0), ("lowpass", "none", None),
    ("lowpass", None, None), ("sizes", "32,64,128", (32, 64, 128)), ("sizes", "[1, 2]", (1, 2)),
    ("sizes", [3], (3,)), ("mode", "modal", "modal"), ("amp", "true", True), ("amp", "off", False),
    ("amp", True, True), ("name", 5, "5"), ("seed", "9", 9),
])
def test_values_are_coerced_to_the_declared_type(field, text, expected):
    """Each text or JSON form a user types becomes a value of the field's type (checked by type and value)."""
    value = getattr(build_config(_Toy, "toy", None, {field: text}), field)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("field,text", [
    ("epochs", "3.5"), ("epochs", "many"), ("epochs", True), ("lowpass", "fine"), ("sizes", "1,a"),
    ("mode", "exhaustive"), ("amp", "maybe"), ("name", [1]),
])
def test_a_mistyped_value_is_one_line_naming_recipe_and_option(field, text):
    """A value that is not of the field's type is an InputError of one line naming recipe and option."""
    with pytest.raises(InputError) as e:
        build_config(_Toy, "toy", None, {field: text})
    msg = str(e.value)
    assert msg.startswith(f"recipe toy: option {field}:") and "\n" not in msg


def test_an_unknown_option_lists_the_known_ones():
    """An option the recipe does not have is an InputError naming it and listing every option."""
    with pytest.raises(InputError, match=r"recipe toy: no option 'epoch' \(options: seed, epochs, lowpass"):
        build_config(_Toy, "toy", None, {"epoch": 3})


def test_specs_and_dict_follow_the_declaration():
    """option_specs lists every field in order with its type name, default and doc; as_dict round-trips."""
    specs = option_specs(_Toy)
    assert list(specs) == ["seed", "epochs", "lowpass", "sizes", "mode", "amp", "name"]
    assert specs["lowpass"].type_name == "float or none" and specs["lowpass"].doc == "start low-pass, Å"
    assert specs["sizes"].type_name == "list of int" and specs["mode"].type_name == "one of posterior|modal"
    c = build_config(_Toy, "toy", None, {"epochs": 2})
    assert build_config(_Toy, "toy", None, as_dict(c)) == c


def test_parse_text_reads_json_and_keeps_plain_text():
    """--set values: JSON literals are decoded, anything else stays text."""
    assert parse_text("3") == 3 and parse_text("true") is True and parse_text("[1, 2]") == [1, 2]
    assert parse_text("null") is None and parse_text("relion") == "relion"
    assert coerce(parse_text("0.5"), float, "x") == 0.5

"""The recipe registry: lookup, typed options and overrides, what a recipe accepts, and that every
option of every recipe is reachable from the command line."""

import dataclasses
import types
import typing

import pytest

from cryolens.cli.main import build_parser, main
from cryolens.cli.options import flag, recipe_overrides
from cryolens.errors import InputError
from cryolens.methods import Known, MethodOutputs, Recipe, get, recipes, register, unregister
from cryolens.methods.config import RecipeConfig, option


def _fit(particles, known, run, config, device=None, progress=True):
    return MethodOutputs(pixel_size=1.0)


def test_backprojection_is_registered_and_needs_poses():
    """backprojection needs poses and CTF; its config is typed, an override is coerced from text and
    the recipe's effective defaults are unchanged by it."""
    r = get("backprojection")
    assert r.accepts(Known(poses=True, ctf=True))
    assert not r.accepts(Known(poses=False, ctf=True))
    cfg = r.config({"pad": "1"})
    assert isinstance(cfg, RecipeConfig) and cfg.pad == 1 and r.defaults["pad"] == 2
    assert r.options()["pad"].default == 2 and "Fourier" in r.options()["pad"].doc


def test_unknown_option_and_name_are_errors():
    """An unknown option and a mistyped value are InputErrors naming the recipe and the field; an
    unknown recipe is a KeyError listing the known ones."""
    with pytest.raises(InputError, match="recipe backprojection: no option 'not_an_option'"):
        get("backprojection").config({"not_an_option": 3})
    with pytest.raises(InputError, match="recipe backprojection: option pad: 'x' is not int"):
        get("backprojection").config({"pad": "x"})
    with pytest.raises(KeyError, match="known:"):
        get("no-such-recipe")


def test_shared_config_class_with_per_recipe_defaults():
    """Two recipes sharing one config class differ only by their ``defaults`` overrides, and a
    recipe's default naming no field of its class is refused at construction."""

    @dataclasses.dataclass(frozen=True)
    class C(RecipeConfig):
        lowpass: float = option(60.0, "Å")

    a = Recipe(name="_a", fit=_fit, summary="", config=C)
    b = Recipe(name="_b", fit=_fit, summary="", config=C, defaults={"lowpass": 30.0})
    assert a.config().lowpass == 60.0 and b.config().lowpass == 30.0
    assert b.options()["lowpass"].default == 30.0 and b.config({"lowpass": 12}).lowpass == 12.0
    with pytest.raises(InputError, match="recipe _c: no option 'wings'"):
        Recipe(name="_c", fit=_fit, summary="", config=C, defaults={"wings": 1})


def test_register_unregister_and_duplicates():
    """A registered recipe is listed until unregistered; a duplicate name and a bad heterogeneity are
    refused."""
    r = Recipe(name="_test_trivial", fit=_fit, summary="trivial")
    register(r)
    try:
        assert "_test_trivial" in recipes()
        with pytest.raises(ValueError, match="already registered"):
            register(r)
    finally:
        unregister("_test_trivial")
    assert "_test_trivial" not in recipes()
    with pytest.raises(ValueError, match="heterogeneity"):
        Recipe(name="x", fit=_fit, summary="", heterogeneity="fuzzy")


def _command(name: str) -> list[str]:
    """The command line (without options) that runs recipe ``name``."""
    rec = get(name)
    if rec.learned:
        return ["train", name, "in.star", "--out", "run"]
    return {"backprojection": ["backproject", "in.star", "--out", "run"],
            "relion-refine3d": ["refine", "in.star", "--out", "run", "--recipe", name],
            "cryosparc-refine": ["refine", "in.star", "--out", "run", "--recipe", name],
            "relion-class3d": ["classify", "in.star", "--out", "run", "--classes", "2"],
            "cryosparc-abinit": ["abinit", "in.star", "--out", "run"],
            "cryosparc-abinit-hetero": ["abinit", "in.star", "--out", "run"]}[name]


def _other_value(typ, default):
    """A value of type ``typ`` different from ``default``, and its command-line text."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is typing.Literal:
        choice = next(c for c in args if c != default)
        return choice, str(choice)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return _other_value(inner, default)
    if origin is tuple:
        item, _ = _other_value(args[0], None)
        value = tuple(default or ()) + (item,)
        return value, ",".join(map(str, value))
    if typ is bool:
        return not default, None
    if typ is int:
        v = (default or 0) + 3
        return v, str(v)
    if typ is float:
        v = (default or 0.0) + 0.25
        return v, repr(v)
    if typ is str:
        v = (default or "") + "x2"
        return v, v
    raise AssertionError(f"option type {typ} has no command-line test")


def test_every_option_of_every_recipe_is_settable_from_the_cli():
    """For every option of every registered recipe, its generated flag of the recipe's command
    (``--option-name``; ``--no-option-name`` for a true bool) given a non-default value reaches the
    recipe's config instance, and so does ``--set option=value``."""
    parser = build_parser()
    checked = 0
    for name, rec in recipes().items():
        assert rec.config_class is not None, f"recipe {name} has no config class"
        base = _command(name)
        for opt, spec in rec.options().items():
            value, text = _other_value(spec.type, spec.default)
            cli = [flag(opt) if value else "--no-" + opt.replace("_", "-")] if text is None else [flag(opt), text]
            args = parser.parse_args([*base, *cli])
            cfg = rec.config(recipe_overrides(args))
            assert getattr(cfg, opt) == value, (name, opt, cli)
            if text is not None:
                args = parser.parse_args([*base, "--set", f"{opt}={text}"])
                assert getattr(rec.config(recipe_overrides(args)), opt) == value, (name, opt, "--set")
            checked += 1
    assert checked > 100


def _opt(cfg, name):
    return cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)


def test_historic_flags_keep_their_meaning():
    """Flags that existed before the generated ones map to the same options."""
    parser = build_parser()
    a = parser.parse_args(["refine", "in.star", "--out", "r", "--relax-sym", "C2", "--lowpass", "20"])
    cfg = get("relion-refine3d").config(recipe_overrides(a))
    assert _opt(cfg, "relax_symmetry") == "C2" and _opt(cfg, "lowpass") == 20.0
    a = parser.parse_args(["classify", "in.star", "--out", "r", "--classes", "3", "--iterations", "4", "--modal"])
    cfg = get("relion-class3d").config(recipe_overrides(a))
    assert (_opt(cfg, "n_classes"), _opt(cfg, "n_iterations"), _opt(cfg, "modal")) == (3, 4, True)
    a = parser.parse_args(["abinit", "in.star", "--out", "r", "--no-refine", "--handover-lowpass", "12"])
    cfg = get("cryosparc-abinit").config(recipe_overrides(a))
    assert _opt(cfg, "refine") is False and _opt(cfg, "handover_lowpass") == 12.0


@pytest.mark.parametrize("argv, field", [
    (["backproject", "nowhere.star", "--out", "OUT", "--set", "wings=3"], "no option 'wings'"),
    (["backproject", "nowhere.star", "--out", "OUT", "--pad", "two"], "option pad: 'two' is not int"),
    (["train", "cryodrgn", "nowhere.star", "--out", "OUT", "--zdim", "1.5"], "option zdim: '1.5' is not int"),
])
def test_bad_option_is_one_line_exit_2(argv, field, tmp_path, capsys):
    """An unknown option or a mistyped value through ``cryolens.cli.main.main``: exit code 2 and one
    stderr line naming the recipe and the field, before any file is read or written."""
    argv = [str(tmp_path / "run") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe " in err[0] and field in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_recipe_named_by_module_is_imported_on_first_use():
    """A recipe whose fit and config are ``"module:attribute"`` names resolves them on first use to the very
    objects of that module (options included); its bad default is refused then, naming the recipe."""
    from cryolens.methods import backprojection

    lazy = Recipe(name="_lazy", fit=".backprojection:fit", config=".backprojection:BackprojectionConfig",
                  summary="", defaults={"pad": 1})
    assert "config=.backprojection:BackprojectionConfig" in repr(lazy)
    assert lazy.fit is backprojection.fit and lazy.config_class is backprojection.BackprojectionConfig
    assert lazy.defaults["pad"] == 1 and lazy.config().pad == 1 and get("backprojection").defaults["pad"] == 2
    bad = Recipe(name="_bad", fit=".backprojection:fit", config=".backprojection:BackprojectionConfig",
                 summary="", defaults={"wings": 1})
    with pytest.raises(InputError, match="recipe _bad: no option 'wings'"):
        bad.options()

"""The recipe registry: lookup, defaults and overrides, what a recipe accepts."""

import pytest

from cryolens.methods import Known, MethodOutputs, Recipe, get, recipes, register, unregister


def _fit(particles, known, run, config, device=None, progress=True):
    return MethodOutputs(pixel_size=1.0)


def test_backprojection_is_registered_and_needs_poses():
    r = get("backprojection")
    assert r.accepts(Known(poses=True, ctf=True))
    assert not r.accepts(Known(poses=False, ctf=True))
    assert r.config({"pad": 1})["pad"] == 1 and r.defaults["pad"] == 2


def test_unknown_option_and_name_are_errors():
    with pytest.raises(KeyError, match="no option"):
        get("backprojection").config({"not_an_option": 3})
    with pytest.raises(KeyError, match="known:"):
        get("no-such-recipe")


def test_register_unregister_and_duplicates():
    r = Recipe(name="_test_trivial", fit=_fit, summary="trivial", defaults={"a": 1})
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

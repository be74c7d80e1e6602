"""`cryolens recipes` and the generated help: every recipe listed, one recipe's options with type,
default, doc and paper; `train --help` points to `cryolens recipes`; `train NAME --help` lists the
recipe's own options with their defaults."""

from cryolens.cli.main import main
from cryolens.methods.registry import get, recipes


def test_recipes_lists_every_recipe(capsys):
    """One line per registered recipe with its heterogeneity and summary."""
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, rec in recipes().items():
        line = next((x for x in out.splitlines() if x.startswith(name + " ")), None)
        assert line is not None and rec.heterogeneity in line and rec.summary in line, name


def test_recipes_name_shows_options_and_paper(capsys):
    """`recipes relion-class3d`: each option as its flag with its default and doc, and the paper."""
    rec = get("relion-class3d")
    assert main(["recipes", "relion-class3d"]) == 0
    out = capsys.readouterr().out
    assert rec.reference in out and "cryolens classify" in out
    for name, spec in rec.options().items():
        line = next(x for x in out.splitlines() if x.strip().startswith("--" + name.replace("_", "-") + " "))
        assert repr(spec.default) in line and spec.doc in line, name
    assert main(["recipes", "no-such-recipe"]) == 2
    assert "no recipe named 'no-such-recipe'" in capsys.readouterr().err


def test_train_help_is_generated_per_recipe(capsys):
    """`train --help` names `cryolens recipes` (not the old `info --recipes`); `train cryodrgn --help`
    shows --zdim with cryodrgn's default and doc."""
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "cryolens recipes" in out and "info --recipes" not in out and "cryodrgn" in out
    assert main(["train", "cryodrgn", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    spec = get("cryodrgn").options()["zdim"]
    assert "--zdim" in out and f"{spec.doc} (default: {spec.default})" in out

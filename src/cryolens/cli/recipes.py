"""List the registered recipes, or show one recipe's options with their types, defaults and docs.

``cryolens recipes``: every recipe with its heterogeneity, what it needs to be known and a summary.
``cryolens recipes NAME``: the recipe's options (each is a flag of its command, e.g.
``cryolens train cryodrgn --zdim 8``, and can be set with ``--set KEY=VALUE`` here and in
``cryolens bench run --set NAME.KEY=VALUE``) and the paper it follows.

  cryolens recipes
  cryolens recipes relion-refine3d
"""

from __future__ import annotations

import argparse

#: the command that runs each non-learned recipe (learned ones run with ``cryolens train NAME``)
COMMAND_OF = {"backprojection": "backproject", "relion-refine3d": "refine", "cryosparc-refine": "refine",
              "relion-class3d": "classify", "cryosparc-abinit": "abinit", "cryosparc-abinit-hetero": "abinit"}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a recipe to show in full")


def command_of(recipe) -> str:
    """How to run ``recipe`` from the command line."""
    if recipe.learned:
        return f"cryolens train {recipe.name}"
    cmd = COMMAND_OF.get(recipe.name)
    return f"cryolens {cmd}" if cmd else f"cryolens bench run --methods {recipe.name}"


def describe(recipe) -> list[str]:
    """The lines of ``cryolens recipes NAME``."""
    from .options import flag

    lines = [f"{recipe.name}: {recipe.summary}",
             f"  heterogeneity: {recipe.heterogeneity}; needs: {', '.join(sorted(recipe.needs)) or 'nothing'} "
             f"(known); learned: {'yes' if recipe.learned else 'no'}",
             f"  paper: {recipe.reference or '-'}", f"  run: {command_of(recipe)}", "", "options:"]
    specs = recipe.options()
    width = max([len(flag(n)) for n in specs] + [8])
    for name, spec in specs.items():
        lines.append(f"  {flag(name):<{width}}  {spec.type_name:<14} default {spec.default!r:<10}  {spec.doc}")
    return lines


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..methods.registry import get, recipes

    if args.name:
        try:
            rec = get(args.name)
        except KeyError as e:
            raise InputError(str(e.args[0])) from None
        print("\n".join(describe(rec)))
        return 0
    table = sorted(recipes().items())
    w = max(len(n) for n, _ in table)
    print(f"{'recipe':<{w}}  {'heterogeneity':<13}  {'needs':<9}  summary")
    for name, rec in table:
        needs = ",".join(sorted(rec.needs)) or "-"
        print(f"{name:<{w}}  {rec.heterogeneity:<13}  {needs:<9}  {rec.summary}")
    print("\ncryolens recipes NAME shows a recipe's options and paper.")
    return 0

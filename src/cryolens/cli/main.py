"""``cryolens``: cryo-EM reconstruction, simulation and evaluation.

Each command lives in its own module of this package with a docstring (its help),
``add_args(parser)`` and ``main(args) -> int``. Bad input ends with one line on stderr
naming the file and the problem and exit code 2 — never a traceback. Recipe commands get one flag per
recipe option, generated from the recipe's typed config (:mod:`cryolens.cli.options`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import DistributedError, InputError

COMMANDS = ["simulate", "backproject", "fsc", "convert", "info", "demo", "refine", "classify", "abinit", "train",
            "eval-vol", "analyze", "bench", "recipes"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``only``, just that command gets its arguments (the others
    keep their name and help line). The arguments of recipe commands are generated from the recipe
    registry, which imports torch: ``cryolens --help`` and a light command skip that."""
    parser = argparse.ArgumentParser(prog="cryolens", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"cryolens.cli.{name.replace('-', '_')}")
        doc = (module.__doc__ or name).strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or name == only:
            module.add_args(p)
        p.set_defaults(_main=module.main)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` in-process; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv) or "")  # "": no command's arguments (usage, --help)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's usage errors (exit 2) and --help (exit 0), as a return code
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args._main(args) or 0)
    except InputError as e:
        print(f"cryolens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except DistributedError as e:
        print(f"cryolens {args.command}: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"cryolens {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: still one line unless asked for more
        if os.environ.get("CRYOLENS_DEBUG"):
            raise
        print(f"cryolens {args.command}: internal error: {type(e).__name__}: {e} "
              "(set CRYOLENS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""What a command loads before it works: ``cryolens --help`` (and a usage error) must not import torch,
matplotlib or the recipe registry; a command's own ``--help`` still lists its generated recipe flags."""

import subprocess
import sys

PROBE = """
import sys
from cryolens.cli.main import main
try:
    code = main({argv!r})
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "matplotlib", "cryolens.methods.registry", "pandas") if m in sys.modules)
print("HEAVY", ",".join(heavy) or "-")
"""


def _probe(argv: list[str]) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, check=True)
    return out.stdout, [line for line in out.stdout.splitlines() if line.startswith("HEAVY")][0]


def test_top_level_help_loads_no_heavy_library():
    text, heavy = _probe(["--help"])
    assert heavy == "HEAVY -", heavy
    for command in ("refine", "classify", "train", "bench", "info"):
        assert command in text


def test_a_command_help_still_has_its_generated_recipe_flags():
    text, heavy = _probe(["refine", "--help"])
    assert "--healpix-order" in text and "--relax-sym" in text and "--set KEY=VALUE" in text
    assert "cryolens.methods.registry" in heavy  # the flags come from the registry, loaded for this command only

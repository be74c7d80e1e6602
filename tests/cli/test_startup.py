"""What a command loads before it works: ``cryolens --help`` (and a usage error) must not import torch,
matplotlib or the recipe registry; ``cryolens info particles.star`` no torch, matplotlib or recipe module; a
recipe command only its own recipes' module; a command's own ``--help`` still lists its generated recipe flags."""

import subprocess
import sys

import mrcfile
import numpy as np

PROBE = """
import sys
from cryolens.cli.main import main
try:
    code = main({argv!r})
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "matplotlib", "cryolens.methods.registry", "pandas") if m in sys.modules)
print("HEAVY", ",".join(heavy) or "-")
print("RECIPES", ",".join(sorted(m for m in sys.modules if m.startswith("cryolens.methods.")
                                 and m.split(".")[-1] not in ("registry", "config"))) or "-")
"""


def _probe(argv: list[str]) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, check=True)
    return out.stdout, [line for line in out.stdout.splitlines() if line.startswith("HEAVY")][0]


def _recipe_modules(text: str) -> str:
    return [line for line in text.splitlines() if line.startswith("RECIPES")][0]


def test_top_level_help_loads_no_heavy_library():
    text, heavy = _probe(["--help"])
    assert heavy == "HEAVY -", heavy
    for command in ("refine", "classify", "train", "bench", "info"):
        assert command in text


def test_a_command_help_still_has_its_generated_recipe_flags():
    text, heavy = _probe(["refine", "--help"])
    assert "--healpix-order" in text and "--relax-sym" in text and "--set KEY=VALUE" in text
    assert "cryolens.methods.registry" in heavy  # the flags come from the registry, loaded for this command only
    assert _recipe_modules(text) == "RECIPES cryolens.methods.refine3d", _recipe_modules(text)  # no other recipe


def test_info_on_a_star_file_loads_no_torch_and_no_recipe(tmp_path):
    """``cryolens info particles.star`` describes the file (exit 0) having imported neither torch nor
    matplotlib nor the recipe registry or any recipe module — nor pandas (numpy reads the STAR table)."""
    stack = tmp_path / "s.mrcs"
    with mrcfile.new(stack) as m:
        m.set_data(np.zeros((3, 8, 8), np.float32))
        m.voxel_size = 2.0
    star = tmp_path / "p.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnVoltage #3\n"
                    "_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n"
                    + "".join(f"{i}@s.mrcs {1e4 + i} 300 2.7 0.1\n" for i in (1, 2, 3)))
    text, heavy = _probe(["info", str(star)])
    assert "particles:  3" in text and "8 px, pixel size 2.0000" in text and "defocus 1e+04 to 1e+04" not in text
    assert "defocus 10001 to 10003 Å" in text, text
    assert heavy == "HEAVY -", heavy
    assert _recipe_modules(text) == "RECIPES -"


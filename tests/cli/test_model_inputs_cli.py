"""A model given to a recipe that starts from one (``cryolens train e2gmm --model``): a file that is not a
PDB/mmCIF, a model with no Cα atoms and a model larger than the box each end the command with one line on
stderr naming the file, and exit code 2 (the checks of ``io.atomic.load_model_for_box``)."""

import sys
from pathlib import Path

from cryolens.cli.main import main
from cryolens.io.atomic import Atoms, write_atoms
from cryolens.io.star import write_star
from cryolens.simulate import bundled_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))
from _drgn_data import blob_dataset  # noqa: E402


def test_bad_models_are_one_line_and_exit_2(tmp_path, capsys):
    particles, _ = blob_dataset(tmp_path, 8, 16)  # 16 px × 3 Å: the box holds ±24 Å
    star = tmp_path / "particles.star"
    write_star(star, particles)
    text = tmp_path / "notes.cif"
    text.write_text("not a model at all\n")
    no_ca = write_atoms(tmp_path / "no_ca.pdb", Atoms([[0, 0, 0], [1.4, 0, 0]], ["N", "O"],
                                                        atom_names=["N", "O"], residue_names=["GLY", "GLY"]))
    cases = [(text, "not a PDB/mmCIF"), (no_ca, "no Cα atoms"), (bundled_model("4E43"), "larger than the box")]
    for path, problem in cases:
        capsys.readouterr()
        rc = main(["train", "e2gmm", str(star), "--out", str(tmp_path / "run"), "--model", str(path),
                   "--quiet", "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, err
        assert len(err.splitlines()) == 1 and str(path) in err and problem in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before any training

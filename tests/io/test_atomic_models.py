"""Atomic models out: moved models (every atom with its residue), PDB / mmCIF / multi-model mmCIF files read
back by gemmi itself, and the three bad model inputs of a method that starts from a model."""

import gemmi
import numpy as np
import pytest

from cryolens.errors import InputError
from cryolens.io.atomic import (Atoms, load_model_for_box, moved_model, read_atoms, residue_index, write_atoms,
                                write_models)
from cryolens.simulate import bundled_model


def _tiny() -> Atoms:
    """Two residues of chain A (GLY 1: N, CA, C; ALA 2: N, CA) and one of chain B (GLY 1: CA)."""
    return Atoms(coords=[[0, 0, 0], [1.5, 0, 0], [2, 1, 0], [3, 1, 0], [4, 1.5, 0.5], [10, 0, 0]],
                 elements=["N", "C", "C", "N", "C", "C"], atom_names=["N", "CA", "C", "N", "CA", "CA"],
                 residue_names=["GLY", "GLY", "GLY", "ALA", "ALA", "GLY"], residue_numbers=[1, 1, 1, 2, 2, 1],
                 chain_ids=["A", "A", "A", "A", "A", "B"], bfactors=[10, 11, 12, 13, 14, 15])


def _gemmi_coords(path, model=0) -> np.ndarray:
    st = gemmi.read_structure(str(path))
    return np.array([a.pos.tolist() for ch in st[model] for r in ch for a in r])


def test_moved_model_moves_each_atom_by_its_residue_displacement():
    """Hand check: residues (A1, A2, B1) → indices (0, 0, 0, 1, 1, 2); each atom gets its residue's row of
    the displacement; B-factors, names and the input are unchanged."""
    atoms = _tiny()
    res = residue_index(atoms)
    assert res.tolist() == [0, 0, 0, 1, 1, 2]
    disp = np.array([[1.0, 0, 0], [0, -2.0, 0], [0, 0, 0.5]])
    moved = moved_model(atoms, res, disp)
    expect = np.array([[1, 0, 0], [2.5, 0, 0], [3, 1, 0], [3, -1, 0], [4, -0.5, 0.5], [10, 0, 0.5]])
    assert np.array_equal(moved.coords, expect)
    assert moved.bfactors.tolist() == [10, 11, 12, 13, 14, 15]
    assert list(moved.atom_names) == list(atoms.atom_names)
    assert atoms.coords[0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="residue indices"):
        moved_model(atoms, res, disp[:2])


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_written_model_reads_back_in_gemmi(tmp_path, suffix):
    """A moved 4E43 written as PDB or mmCIF: gemmi's own reader gives the same coordinates to 1e-3 Å and the
    same B-factors; the format follows the suffix."""
    atoms = read_atoms(bundled_model("4E43"))
    rng = np.random.default_rng(0)
    moved = moved_model(atoms, residue_index(atoms), rng.normal(0, 2.0, (residue_index(atoms).max() + 1, 3)))
    path = write_atoms(tmp_path / f"moved{suffix}", moved)
    assert np.abs(_gemmi_coords(path) - moved.coords).max() < 1e-3
    st = gemmi.read_structure(str(path))
    assert np.allclose([a.b_iso for ch in st[0] for r in ch for a in r], moved.bfactors, atol=0.01)
    text = path.read_text()
    assert text.startswith("data_") if suffix == ".cif" else "ATOM  " in text[:200]
    assert not list(tmp_path.glob(".*part*"))  # the atomic write left no temporary file


def test_several_models_make_one_multi_model_mmcif(tmp_path):
    """Three models of the same atoms → one mmCIF with 3 models (pdbx_PDB_model_num 1..3), each model's
    coordinates as given (gemmi's reader)."""
    atoms = _tiny()
    res = residue_index(atoms)
    models = [moved_model(atoms, res, np.full((3, 3), float(k))) for k in range(3)]
    path = write_models(tmp_path / "traj.cif", models)
    st = gemmi.read_structure(str(path))
    assert len(st) == 3
    for k in range(3):
        assert np.abs(_gemmi_coords(path, k) - (atoms.coords + k)).max() < 1e-3
    block = gemmi.cif.read(str(path)).sole_block()
    assert sorted(set(block.find_values("_atom_site.pdbx_PDB_model_num"))) == ["1", "2", "3"]


def _one_line_error(path, box=64, pixel=1.5, match=""):
    with pytest.raises(InputError) as err:
        load_model_for_box(path, box, pixel)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg
    return msg


def test_bad_model_inputs_are_one_line_errors(tmp_path):
    """Not a PDB/mmCIF (text and random bytes), no Cα atoms, larger than the box: one line naming the
    file; a protein that fits is read."""
    text = tmp_path / "notes.pdb"
    text.write_text("these are my notes, not a model\n")
    _one_line_error(text, match="not a PDB/mmCIF model")
    junk = tmp_path / "junk.cif"
    junk.write_bytes(np.random.default_rng(0).bytes(400))
    _one_line_error(junk)
    no_ca = _tiny().subset(np.array([0, 2, 3]))  # N, C, N only
    _one_line_error(write_atoms(tmp_path / "no_ca.pdb", no_ca), match="no Cα atoms")
    hiv = bundled_model("4E43")
    reach = np.linalg.norm(read_atoms(hiv).coords - read_atoms(hiv).center_of_mass(), axis=1).max()
    msg = _one_line_error(hiv, box=32, pixel=1.5, match="larger than the box")
    assert f"{reach:.1f} Å" in msg
    assert len(load_model_for_box(hiv, int(np.ceil(2 * reach / 1.5)) + 2, 1.5)) == len(read_atoms(hiv))

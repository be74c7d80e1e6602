"""Reading and writing atomic models: PDB and mmCIF give the same atoms, a written model reads back
unchanged, bad files are one-line input errors."""

import gemmi
import numpy as np
import pytest

from cryolens.errors import InputError
from cryolens.io.atomic import read_atoms, write_atoms
from cryolens.simulate import bundled_model


def test_pdb_reading_matches_the_file_text():
    """Atom count, first atom and waters of 4E43 as the PDB text lists them (parsed here by hand)."""
    path = bundled_model("4E43")
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith(("ATOM", "HETATM"))]
    waters = [ln for ln in lines if ln[17:20] == "HOH"]
    atoms = read_atoms(path)
    assert len(atoms) == len(lines) - len(waters)
    assert len(read_atoms(path, waters=True)) == len(lines)
    first = lines[0]
    assert np.allclose(atoms.coords[0], [float(first[30:38]), float(first[38:46]), float(first[46:54])])
    assert atoms.elements[0] == first[76:78].strip().capitalize()
    assert atoms.bfactors[0] == pytest.approx(float(first[60:66]))
    assert atoms.chain_ids[0] == first[21] and atoms.residue_numbers[0] == int(first[22:26])
    assert "HOH" not in set(atoms.residue_names)


def test_mmcif_gives_the_same_atoms(tmp_path):
    """The same structure written as mmCIF by gemmi reads back to identical coordinates and elements."""
    st = gemmi.read_structure(str(bundled_model("1hvr")))
    cif = tmp_path / "model.cif"
    st.make_mmcif_document().write_file(str(cif))
    a, b = read_atoms(bundled_model("1hvr")), read_atoms(cif)
    assert len(a) == len(b)
    assert np.allclose(a.coords, b.coords, atol=1e-3)
    assert list(a.elements) == list(b.elements)


def test_write_read_round_trip(tmp_path):
    """A moved model written as PDB reads back with the new coordinates (to PDB's 1e-3 Å) and the
    same names, elements, occupancies and altlocs."""
    a = read_atoms(bundled_model("4E43"))
    moved = a.with_coords(a.coords + np.array([1.25, -3.5, 0.125]))
    out = write_atoms(tmp_path / "moved.pdb", moved)
    b = read_atoms(out)
    assert np.abs(b.coords - moved.coords).max() < 1e-3
    for name in ("elements", "atom_names", "residue_names", "chain_ids", "altlocs"):
        assert list(getattr(b, name)) == list(getattr(moved, name))
    assert np.allclose(b.occupancies, moved.occupancies) and np.array_equal(b.residue_numbers, moved.residue_numbers)
    assert np.array_equal(a.coords, read_atoms(bundled_model("4E43")).coords)  # the input is untouched


def test_missing_and_corrupt_files(tmp_path):
    """Missing, empty and garbage files raise InputError naming the file."""
    with pytest.raises(InputError, match="not found"):
        read_atoms(tmp_path / "nope.pdb")
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\nloop_\n_atom_site.id\n'unterminated\n")
    with pytest.raises(InputError, match="bad.cif"):
        read_atoms(bad)
    empty = tmp_path / "empty.pdb"
    empty.write_text("HEADER    NOTHING\nEND\n")
    with pytest.raises(InputError, match="no atoms"):
        read_atoms(empty)


def test_every_bundled_model_matches_its_provenance_table_and_reads():
    """Each bundled file has a row in data/README.md whose checksums match the file (and, for a ``.gz``, the
    package's file inside it), and reads to as many atoms as its text has ATOM/HETATM records less waters."""
    import gzip
    import hashlib
    import re

    from cryolens.simulate import BUNDLED_MODELS, DATA_DIR

    table = (DATA_DIR / "README.md").read_text()
    for name, filename in BUNDLED_MODELS.items():
        raw = (DATA_DIR / filename).read_bytes()
        text = gzip.decompress(raw) if filename.endswith(".gz") else raw
        digests = {hashlib.sha256(raw).hexdigest(), hashlib.sha256(text).hexdigest()}
        row = next((ln for ln in table.splitlines() if ln.startswith(f"| `{filename}`")), None)
        assert row is not None, f"{filename} has no provenance row"
        assert digests <= set(re.findall(r"[0-9a-f]{64}", row)), f"{filename}: checksum differs from the table"
        records = [ln for ln in text.decode().splitlines() if ln.startswith(("ATOM", "HETATM"))]
        expected = sum(1 for ln in records if ln[17:20] not in ("HOH", "WAT"))
        assert len(read_atoms(bundled_model(name))) == expected, name

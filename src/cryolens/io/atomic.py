"""Atomic models (PDB and mmCIF, read with gemmi): the atoms of the first model as arrays.

Coordinates are ``(x, y, z)`` in Å, in the model file's own frame. Alternate conformations are
kept with their occupancies (so a density sums them with the right weights); waters and
hydrogens can be dropped on reading. :func:`write_atoms` writes a (moved) model as PDB, so a
simulated dataset can ship the exact atoms each ground-truth map was computed from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import gemmi
import numpy as np

from ..errors import InputError
from .files import atomic_write_text, require_file

_STR_FIELDS = ("elements", "atom_names", "residue_names", "chain_ids", "altlocs")


@dataclass
class Atoms:
    """``M`` atoms of one model.

    coords: ``(M, 3)`` float64 Å ``(x, y, z)``. elements: ``(M,)`` str, capitalised symbols
    (``"C"``, ``"Fe"``). bfactors: ``(M,)`` isotropic B (Å²). occupancies: ``(M,)``.
    chain_ids, residue_names, atom_names, altlocs (``""`` when none): ``(M,)`` str.
    residue_numbers: ``(M,)`` int (author numbering). het: ``(M,)`` bool, HETATM records.
    source: the file they came from ("" when built in code).
    """

    coords: np.ndarray
    elements: np.ndarray
    bfactors: np.ndarray | None = None
    occupancies: np.ndarray | None = None
    chain_ids: np.ndarray | None = None
    residue_numbers: np.ndarray | None = None
    residue_names: np.ndarray | None = None
    atom_names: np.ndarray | None = None
    altlocs: np.ndarray | None = None
    het: np.ndarray | None = None
    source: str = field(default="")

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.float64).reshape(-1, 3)
        m = self.coords.shape[0]
        self.elements = np.array([str(e).strip().capitalize() for e in np.asarray(self.elements).reshape(-1)],
                                 dtype=object)
        if self.elements.shape != (m,):
            raise ValueError(f"Atoms: {self.elements.shape[0]} elements for {m} coordinates")
        defaults = {"bfactors": 0.0, "occupancies": 1.0, "chain_ids": "A", "residue_numbers": 1,
                    "residue_names": "UNK", "atom_names": None, "altlocs": "", "het": False}
        dtypes = {"bfactors": np.float64, "occupancies": np.float64, "residue_numbers": np.int64, "het": bool}
        for name, default in defaults.items():
            v = getattr(self, name)
            if v is None:
                v = self.elements.copy() if name == "atom_names" else np.full(m, default, dtype=object)
            v = np.asarray(v, dtype=dtypes.get(name, object)).reshape(-1)
            if name in _STR_FIELDS:
                v = np.array([str(s) for s in v], dtype=object)
            if v.shape != (m,):
                raise ValueError(f"Atoms: {name} has {v.shape[0]} values for {m} atoms")
            setattr(self, name, v)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def subset(self, mask) -> Atoms:
        """The atoms at ``mask`` (boolean ``(M,)`` or integer indices), copied."""
        idx = np.asarray(mask)
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = v[idx].copy()
        return Atoms(**out)

    def with_coords(self, coords) -> Atoms:
        """A copy with new ``(M, 3)`` coordinates (Å); everything else unchanged."""
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape != self.coords.shape:
            raise ValueError(f"with_coords: got shape {coords.shape}, expected {self.coords.shape}")
        return replace(self, coords=coords.copy(), **{k: getattr(self, k).copy() for k in (
            "elements", "bfactors", "occupancies", "chain_ids", "residue_numbers", "residue_names",
            "atom_names", "altlocs", "het")})

    def masses(self) -> np.ndarray:
        """``(M,)`` atomic masses (u) times occupancy."""
        table = {e: gemmi.Element(e).weight for e in set(self.elements)}
        return np.array([table[e] for e in self.elements]) * self.occupancies

    def center_of_mass(self) -> np.ndarray:
        """``(3,)`` mass-weighted (occupancy-weighted) centre, Å."""
        w = self.masses()
        if w.sum() <= 0:
            return self.coords.mean(axis=0)
        return (self.coords * w[:, None]).sum(axis=0) / w.sum()


def read_atoms(path: str | os.PathLike, waters: bool = False, hydrogens: bool = True) -> Atoms:
    """Read the first model of a PDB or mmCIF file (gzip allowed).

    waters: keep water molecules (default: drop them). hydrogens: keep hydrogen (and deuterium)
    atoms. Raises :class:`InputError` for a missing, unreadable or atom-less file, or an atom
    whose element gemmi does not know.
    """
    p = require_file(path, "atomic model")
    try:
        st = gemmi.read_structure(str(p))
    except Exception as e:  # gemmi raises RuntimeError / ValueError with a multi-line text
        raise InputError(f"{p}: not a readable PDB/mmCIF file ({' '.join(str(e).split())})") from None
    if len(st) == 0:
        raise InputError(f"{p}: no model (no atoms) in the file")
    if not waters:
        st.remove_waters()
    if not hydrogens:
        st.remove_hydrogens()
    cols: dict[str, list] = {k: [] for k in ("coords", "elements", "bfactors", "occupancies", "chain_ids",
                                             "residue_numbers", "residue_names", "atom_names", "altlocs", "het")}
    for chain in st[0]:
        for res in chain:
            for atom in res:
                el = atom.element.name
                if el == "X" or atom.element.atomic_number == 0:
                    raise InputError(f"{p}: atom {atom.name} of {chain.name}/{res.name}{res.seqid.num} "
                                     "has an unknown element")
                cols["coords"].append(atom.pos.tolist())
                cols["elements"].append(el)
                cols["bfactors"].append(atom.b_iso)
                cols["occupancies"].append(atom.occ)
                cols["chain_ids"].append(chain.name)
                cols["residue_numbers"].append(res.seqid.num)
                cols["residue_names"].append(res.name)
                cols["atom_names"].append(atom.name)
                cols["altlocs"].append(atom.altloc if atom.has_altloc() else "")
                cols["het"].append(res.het_flag == "H")
    if not cols["coords"]:
        raise InputError(f"{p}: no atoms in the first model" + ("" if waters else " (after removing waters)"))
    coords = np.asarray(cols.pop("coords"), dtype=np.float64)
    if not np.isfinite(coords).all():
        raise InputError(f"{p}: non-finite atom coordinates")
    return Atoms(coords=coords, source=str(p), **cols)


def atoms_to_structure(atoms: Atoms) -> gemmi.Structure:
    """A one-model gemmi structure holding ``atoms`` (chains and residues in first-seen order)."""
    st = gemmi.Structure()
    st.name = Path(atoms.source).stem if atoms.source else "cryolens"
    model = gemmi.Model("1")
    chains: dict[str, gemmi.Chain] = {}
    residues: dict[tuple, gemmi.Residue] = {}
    order: list[tuple] = []
    for i in range(len(atoms)):
        cid = atoms.chain_ids[i]
        if cid not in chains:
            chains[cid] = gemmi.Chain(cid)
        key = (cid, int(atoms.residue_numbers[i]), atoms.residue_names[i])
        if key not in residues:
            r = gemmi.Residue()
            r.name = atoms.residue_names[i]
            r.seqid = gemmi.SeqId(int(atoms.residue_numbers[i]), " ")
            r.het_flag = "H" if atoms.het[i] else "A"
            residues[key] = r
            order.append(key)
        a = gemmi.Atom()
        a.name = atoms.atom_names[i]
        a.element = gemmi.Element(atoms.elements[i])
        a.pos = gemmi.Position(*atoms.coords[i])
        a.b_iso = float(atoms.bfactors[i])
        a.occ = float(atoms.occupancies[i])
        a.altloc = atoms.altlocs[i][:1] if atoms.altlocs[i] else "\0"
        residues[key].add_atom(a)
    for key in order:
        chains[key[0]].add_residue(residues[key])
    for ch in chains.values():
        model.add_chain(ch)
    st.add_model(model)
    st.setup_entities()
    return st


def write_atoms(path: str | os.PathLike, atoms: Atoms) -> Path:
    """Write ``atoms`` as a PDB file, atomically (chain, residue and atom names, element, B,
    occupancy and altloc as held in ``atoms``). Returns the path."""
    st = atoms_to_structure(atoms)
    opts = gemmi.PdbWriteOptions()
    opts.minimal_file = True
    opts.cryst1_record = False  # a simulation box is not a crystal cell
    atomic_write_text(path, st.make_pdb_string(opts))
    return Path(path)

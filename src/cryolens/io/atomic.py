"""Atomic models (PDB and mmCIF, read with gemmi): the atoms of the first model as arrays.

Coordinates are ``(x, y, z)`` in Å, in the model file's own frame. Alternate conformations are
kept with their occupancies (so a density sums them with the right weights); waters and
hydrogens can be dropped on reading. :func:`write_atoms` writes a (moved) model as PDB or mmCIF, so
a simulated dataset can ship the exact atoms each ground-truth map was computed from;
:func:`write_models` writes several models of the same atoms as one multi-model file (a trajectory
for ChimeraX or PyMOL). :func:`moved_model` moves every atom with its residue (a residue-level
Gaussian mixture's displacement), and :func:`load_model_for_box` is the checked entry point of the
methods that start from a model (a protein that fits the box).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
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
        raise InputError(f"{p}: not a PDB/mmCIF model (unreadable: {' '.join(str(e).split())})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"{p}: not a PDB/mmCIF model: no atoms in the file")
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


def residue_index(atoms: Atoms) -> np.ndarray:
    """``(M,)`` int: the residue of each atom, numbered 0, 1, … in first-seen order, a residue being one
    (chain, residue number, residue name) as :func:`atoms_to_structure` groups them (alternate
    conformations of a residue share it)."""
    seen: dict[tuple, int] = {}
    keys = zip(atoms.chain_ids, atoms.residue_numbers.tolist(), atoms.residue_names)
    return np.array([seen.setdefault(k, len(seen)) for k in keys], dtype=np.int64)


def moved_model(atoms: Atoms, residue_of_atom: np.ndarray, displacement: np.ndarray) -> Atoms:
    """A copy of ``atoms`` with atom ``i`` moved by ``displacement[residue_of_atom[i]]`` (Å): every atom
    translated with its residue's Gaussian. residue_of_atom: ``(M,)`` int (e.g. :func:`residue_index`, or
    the identity for one Gaussian per atom); displacement ``(G, 3)`` Å. B-factors, occupancies and names
    are kept."""
    idx = np.asarray(residue_of_atom, dtype=np.int64).reshape(-1)
    disp = np.asarray(displacement, dtype=np.float64).reshape(-1, 3)
    if idx.shape != (len(atoms),):
        raise ValueError(f"moved_model: {idx.shape[0]} residue indices for {len(atoms)} atoms")
    if len(idx) and (idx.min() < 0 or idx.max() >= len(disp)):
        raise ValueError(f"moved_model: residue indices must lie in [0, {len(disp)})")
    return atoms.with_coords(atoms.coords + disp[idx])


def _model(atoms: Atoms, name: str) -> gemmi.Model:
    """One gemmi model holding ``atoms`` (chains and residues in first-seen order)."""
    model = gemmi.Model(name)
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
    return model


def atoms_to_structure(atoms: Atoms | Sequence[Atoms]) -> gemmi.Structure:
    """A gemmi structure holding ``atoms`` as model 1, or a sequence of them as models 1, 2, …"""
    models = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    st = gemmi.Structure()
    st.name = Path(models[0].source).stem if models and models[0].source else "cryolens"
    for k, m in enumerate(models):
        st.add_model(_model(m, str(k + 1)))
    st.setup_entities()
    return st


def _write_structure(path: str | os.PathLike, st: gemmi.Structure) -> Path:
    """``st`` as mmCIF (``.cif``, ``.mmcif``) or PDB (``.pdb``, ``.ent``), by the suffix, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".cif", ".mmcif"):
        text = st.make_mmcif_document().as_string()
    elif suffix in (".pdb", ".ent"):
        opts = gemmi.PdbWriteOptions()
        opts.minimal_file = True
        opts.cryst1_record = False  # a simulation box is not a crystal cell
        text = st.make_pdb_string(opts)
    else:
        raise ValueError(f"{path}: an atomic model is written as .pdb/.ent or .cif/.mmcif")
    atomic_write_text(path, text)
    return path


def write_atoms(path: str | os.PathLike, atoms: Atoms) -> Path:
    """Write ``atoms`` as PDB (``.pdb``/``.ent``) or mmCIF (``.cif``/``.mmcif``), by the suffix,
    atomically (chain, residue and atom names, element, B, occupancy and altloc as held in
    ``atoms``). Returns the path."""
    return _write_structure(path, atoms_to_structure(atoms))


def write_models(path: str | os.PathLike, models: Sequence[Atoms]) -> Path:
    """Write several models (e.g. the same atoms along a latent traversal) as one multi-model mmCIF
    (or PDB with MODEL records), atomically. PyMOL loads the models as the states of one object; ChimeraX
    plays them as a trajectory when opened with ``open FILE coordsets true``."""
    if not models:
        raise ValueError(f"{path}: no models to write")
    return _write_structure(path, atoms_to_structure(models))


def load_model_for_box(path: str | os.PathLike, box_size: int, pixel_size: float,
                       center: np.ndarray | None = None, waters: bool = False) -> Atoms:
    """Read a protein model that a method will place in a ``box_size``-px box of ``pixel_size`` Å/px,
    centred on ``center`` (Å, default its centre of mass). Raises :class:`InputError` naming the file when
    it is not a PDB/mmCIF model, has no Cα atoms, or is larger than the box (an atom farther than
    ``D·p/2`` from the centre leaves the box in some orientation)."""
    atoms = read_atoms(path, waters=waters)
    if not bool(((atoms.atom_names == "CA") & (atoms.elements == "C")).any()):
        raise InputError(f"{path}: no Cα atoms (no atom named CA): not a protein model")
    centre = atoms.center_of_mass() if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    reach = float(np.linalg.norm(atoms.coords - centre, axis=1).max())
    half = box_size * pixel_size / 2
    if reach > half:
        raise InputError(f"{path}: the model is larger than the box: atoms reach {reach:.1f} Å from its centre "
                         f"but a box of {box_size} px × {pixel_size:g} Å/px holds ±{half:.1f} Å")
    return atoms


def select_atoms(atoms: Atoms, selection: str | np.ndarray | Sequence[bool]) -> np.ndarray:
    """Boolean ``(M,)`` mask of a selection: ``"B"`` (chain B), ``"B:43-58"`` (residues 43 to 58
    of chain B, author numbering, inclusive), several joined by ``","`` (``"A:1-10,B"``), or a
    boolean mask passed through. Raises :class:`InputError` if nothing is selected."""
    if not isinstance(selection, str):
        mask = np.asarray(selection, dtype=bool).reshape(-1)
        if mask.shape != (len(atoms),):
            raise InputError(f"selection mask has {mask.shape[0]} entries for {len(atoms)} atoms")
        return mask
    mask = np.zeros(len(atoms), dtype=bool)
    for part in selection.split(","):
        m = re.fullmatch(r"\s*([^:\s]+)\s*(?::\s*(-?\d+)\s*(?:-\s*(-?\d+))?)?\s*", part)
        if not m:
            raise InputError(f"selection {selection!r}: expected CHAIN or CHAIN:FIRST-LAST (e.g. B or B:43-58)")
        chain, lo, hi = m.group(1), m.group(2), m.group(3)
        sel = atoms.chain_ids == chain
        if lo is not None:
            hi = lo if hi is None else hi
            sel &= (atoms.residue_numbers >= int(lo)) & (atoms.residue_numbers <= int(hi))
        mask |= sel
    if not mask.any():
        chains = ", ".join(sorted(set(atoms.chain_ids)))
        raise InputError(f"{atoms.source or 'model'}: selection {selection!r} matches no atom (chains: {chains})")
    return mask

"""Distances between atomic models: RMSD after optimal superposition (Kabsch) and an
internal-coordinate distance (contact maps) that needs no superposition at all.

Coordinates are ``(M, 3)`` float64 Å, the same atoms in the same order in both models (e.g. two
states of one trajectory, or a fitted model and its ground truth). The plain RMSD without
superposition is :func:`rmsd`; :func:`rmsd_superposed` superposes first
and then calls it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.rotations import rigid_fit
from ..io.atomic import Atoms


def rmsd(a: Atoms | np.ndarray, b: Atoms | np.ndarray) -> float:
    """Root-mean-square deviation (Å) between two equal-length coordinate sets, no superposition."""
    x = a.coords if isinstance(a, Atoms) else np.asarray(a)
    y = b.coords if isinstance(b, Atoms) else np.asarray(b)
    return float(np.sqrt(((x - y) ** 2).sum(-1).mean()))


def _coords(x: Atoms | np.ndarray) -> np.ndarray:
    c = x.coords if isinstance(x, Atoms) else np.asarray(x, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"expected (M, 3) coordinates, got {c.shape}")
    return c.astype(np.float64)


def kabsch(mobile: Atoms | np.ndarray, target: Atoms | np.ndarray,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The proper rotation ``R`` and translation ``t`` minimising ``Σ w |R x_i + t − y_i|²``
    (Kabsch; reflections excluded). Returns ``(R (3, 3), t (3,))``; apply as ``x @ R.T + t``."""
    x, y = _coords(mobile), _coords(target)
    if x.shape != y.shape:
        raise ValueError(f"kabsch: models have {x.shape[0]} and {y.shape[0]} atoms")
    w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
    r, t = rigid_fit(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64), w)
    return r.numpy(), t.numpy()


def superpose(mobile: Atoms | np.ndarray, target: Atoms | np.ndarray) -> np.ndarray:
    """``mobile``'s coordinates ``(M, 3)`` moved onto ``target`` by :func:`kabsch`."""
    r, t = kabsch(mobile, target)
    return _coords(mobile) @ r.T + t


def rmsd_superposed(a: Atoms | np.ndarray, b: Atoms | np.ndarray) -> float:
    """RMSD (Å) between two models after the optimal rigid superposition of ``a`` onto ``b``."""
    return rmsd(superpose(a, b), _coords(b))


def contact_map(x: Atoms | np.ndarray, cutoff: float = 8.0) -> np.ndarray:
    """``(M, M)`` bool: pairs of atoms closer than ``cutoff`` Å (diagonal excluded)."""
    c = _coords(x)
    dist = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    out = dist < cutoff
    np.fill_diagonal(out, False)
    return out


def contact_map_distance(a: Atoms | np.ndarray, b: Atoms | np.ndarray, cutoff: float = 8.0) -> float:
    """Fraction of atom pairs in contact (``< cutoff`` Å) in one model but not the other, over the
    pairs in contact in either (a Jaccard distance, 0 = same contacts, 1 = none shared). Invariant
    to any rigid motion of either model: it compares internal coordinates only."""
    ca, cb = contact_map(a, cutoff), contact_map(b, cutoff)
    union = int((ca | cb).sum())
    return float((ca ^ cb).sum() / union) if union else 0.0


def backbone_ca(atoms: Atoms) -> Atoms:
    """The Cα atoms of ``atoms`` (protein residues, not HETATM), for residue-level comparisons."""
    if atoms.atom_names is None:
        raise ValueError(f"{atoms.source or 'model'}: no atom names")
    mask = (np.asarray(atoms.atom_names) == "CA") & ~np.asarray(atoms.het if atoms.het is not None
                                                                 else np.zeros(len(atoms), bool))
    return atoms.subset(mask)


def ca_by_residue(atoms: Atoms) -> dict[tuple[str, int], np.ndarray]:
    """``{(chain, author residue number): (3,) Cα coordinates (Å)}`` of the protein residues of ``atoms``;
    where alternate locations repeat a Cα, the first in altloc order (none, then ``A``, ...)."""
    ca = backbone_ca(atoms)
    order = np.argsort(np.asarray(ca.altlocs, dtype=str), kind="stable")
    out: dict[tuple[str, int], np.ndarray] = {}
    for i in order:
        out.setdefault((str(ca.chain_ids[i]), int(ca.residue_numbers[i])), ca.coords[i])
    return out


def paired_ca(a: Atoms | dict, b: Atoms | dict) -> tuple[np.ndarray, np.ndarray]:
    """Cα coordinates ``(m, 3)`` of the residues two models share, paired by (chain, residue number), in
    key order — models need not list the same atoms in the same order. ``a``/``b`` may be models or
    :func:`ca_by_residue` dictionaries (to pair one model with many without re-indexing it)."""
    da = a if isinstance(a, dict) else ca_by_residue(a)
    db = b if isinstance(b, dict) else ca_by_residue(b)
    keys = sorted(da.keys() & db.keys())
    if not keys:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.stack([da[k] for k in keys]), np.stack([db[k] for k in keys])

"""Anisotropic network model (ANM) normal modes of a real structure: an MD-like continuous motion.

The elastic network (Atilgan et al., Biophys. J. 80:505, 2001): the ``n`` Cα atoms are nodes, and
every pair closer than ``cutoff`` Å in the given structure is joined by a spring of stiffness ``gamma``
whose rest length is their distance there. The energy is

    E(r) = γ/2 · Σ_{i<j, |r⁰ᵢⱼ| < cutoff} (|rᵢ − rⱼ| − |r⁰ᵢ − r⁰ⱼ|)²

and its Hessian at the given structure (the minimum) is the ``(3n, 3n)`` matrix whose off-diagonal
``3 × 3`` block of a joined pair is ``−γ · eᵢⱼ eᵢⱼᵀ`` (``eᵢⱼ`` the unit vector from ``j`` to ``i``), and
whose diagonal blocks make every block row sum to zero. Its six zero eigenvalues are the rigid-body
translations and rotations; the eigenvectors of the next-smallest eigenvalues are the collective
motions ("modes"). A trajectory along a mode moves every Cα by ``amplitude × mode`` and every other
atom of a residue with that residue's Cα (:func:`cryolens.io.atomic.moved_model`), so side chains and
ligand atoms travel rigidly with their residue; atoms of residues without a Cα (ligands, nucleic
acids) move with the nearest Cα.

The amplitude is given as the Cα RMSD (Å) from the start structure: a mode is normalised to unit
norm, so moving by ``a · √n · mode`` gives an RMSD of exactly ``a``. A linear (first-order) move
stretches bonds at large amplitudes (it is a benchmark motion, not a simulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.atomic import Atoms, moved_model
from ..metrics.atomic import backbone_ca


def anm_hessian(ca: np.ndarray, cutoff: float = 15.0, gamma: float = 1.0) -> np.ndarray:
    """``(3n, 3n)`` float64 ANM Hessian (module docstring) of the ``(n, 3)`` Cα coordinates ``ca`` (Å),
    ordered ``[x₀, y₀, z₀, x₁, …]``; units γ / Å² (γ per Å² of spring stiffness)."""
    x = np.asarray(ca, dtype=np.float64).reshape(-1, 3)
    n = x.shape[0]
    diff = x[:, None, :] - x[None, :, :]  # (n, n, 3): r_i − r_j
    dist2 = (diff ** 2).sum(-1)
    joined = (dist2 < cutoff ** 2) & ~np.eye(n, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        blocks = -gamma * diff[:, :, :, None] * diff[:, :, None, :] / dist2[:, :, None, None]  # (n, n, 3, 3)
    blocks[~joined] = 0.0
    blocks[np.arange(n), np.arange(n)] = -blocks.sum(axis=1)
    return blocks.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)


def enm_energy(coords: np.ndarray, reference: np.ndarray, cutoff: float = 15.0, gamma: float = 1.0) -> float:
    """The elastic-network energy ``E(coords)`` (module docstring) of the network built on
    ``reference`` (``(n, 3)`` Å each), in γ·Å²."""
    x = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    r0 = np.asarray(reference, dtype=np.float64).reshape(-1, 3)
    i, j = np.triu_indices(len(r0), 1)
    d0 = np.linalg.norm(r0[i] - r0[j], axis=1)
    keep = d0 < cutoff
    d = np.linalg.norm(x[i[keep]] - x[j[keep]], axis=1)
    return float(0.5 * gamma * ((d - d0[keep]) ** 2).sum())


@dataclass(frozen=True)
class NormalModes:
    """``eigenvalues (m,)`` (γ/Å², ascending) and unit ``modes (m, n, 3)`` of the non-trivial modes (the six
    rigid-body zero modes dropped), with ``ca (n, 3)`` the network's Cα coordinates (Å)."""

    eigenvalues: np.ndarray
    modes: np.ndarray
    ca: np.ndarray


def anm_modes(ca: np.ndarray, n_modes: int = 10, cutoff: float = 15.0, gamma: float = 1.0) -> NormalModes:
    """The ``n_modes`` lowest non-trivial ANM modes of ``ca (n, 3)`` Å (dense eigendecomposition,
    :func:`numpy.linalg.eigh`). Raises :class:`InputError` when the network is not rigid (more than six
    zero eigenvalues: a cutoff too short for the structure)."""
    x = np.asarray(ca, dtype=np.float64).reshape(-1, 3)
    if x.shape[0] < 3:
        raise InputError(f"ANM: {x.shape[0]} Cα atoms; need at least 3")
    w, v = np.linalg.eigh(anm_hessian(x, cutoff, gamma))
    tol = 1e-8 * max(1.0, float(w[-1]))
    if w[6] <= tol:
        raise InputError(f"ANM: the network at cutoff {cutoff} Å has more than six zero modes (a part is "
                         "not connected); use a longer cutoff")
    m = min(int(n_modes), len(w) - 6)
    modes = v[:, 6:6 + m].T.reshape(m, -1, 3)
    return NormalModes(eigenvalues=w[6:6 + m], modes=modes, ca=x)


def residue_of_atoms(atoms: Atoms, ca: Atoms) -> np.ndarray:
    """``(M,)`` int: for each atom, the index in ``ca`` of its residue's Cα (same chain and residue
    number), or of the nearest Cα for atoms of residues that have none."""
    key = {(c, int(r)): k for k, (c, r) in enumerate(zip(ca.chain_ids, ca.residue_numbers))}
    out = np.array([key.get((c, int(r)), -1) for c, r in zip(atoms.chain_ids, atoms.residue_numbers)],
                   dtype=np.int64)
    lost = np.nonzero(out < 0)[0]
    if lost.size:
        from scipy.spatial import cKDTree

        out[lost] = cKDTree(ca.coords).query(atoms.coords[lost])[1]
    return out


def anm_trajectory(atoms: Atoms, mode: int = 0, amplitudes_rmsd: np.ndarray | list[float] = (-3.0, 3.0),
                   cutoff: float = 15.0) -> tuple[list[Atoms], NormalModes]:
    """One model of ``atoms`` per amplitude (Cα RMSD in Å from ``atoms``, signed) along the ANM mode
    ``mode`` (0 = the lowest non-trivial one), every atom moved with its residue's Cα (module docstring).
    Returns ``(models, modes)``."""
    ca = backbone_ca(atoms)
    nm = anm_modes(ca.coords, n_modes=int(mode) + 1, cutoff=cutoff)
    vec = nm.modes[int(mode)]
    # a deterministic sign: the mode's largest Cα displacement points along +x of the model frame
    big = np.argmax((vec ** 2).sum(1))
    vec = vec * (1.0 if vec[big, int(np.argmax(np.abs(vec[big])))] >= 0 else -1.0)
    res = residue_of_atoms(atoms, ca)
    scale = np.sqrt(len(ca))
    models = [moved_model(atoms, res, float(a) * scale * vec) for a in np.asarray(amplitudes_rmsd, dtype=np.float64)]
    return models, nm

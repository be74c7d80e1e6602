"""Conformational heterogeneity for simulated datasets.

- Discrete: ``K`` states (maps or models) with populations; :func:`sample_states` draws each
  image's state.
- Continuous: a hinge motion. :func:`rotate_about_axis` turns a selection of atoms (a chain, or a
  residue range of a chain) rigidly about an axis through a pivot; :func:`hinge_trajectory` makes
  one model per angle. A dataset samples ``K`` states along the trajectory and records each
  image's angle as its continuous coordinate.
- A trajectory can also be a user's list of model files (:func:`trajectory_from_files`).

Default hinge of the bundled models (:func:`bundled_hinge`, built by :func:`dimer_hinge`). 4E43 and
1HVR are both HIV-1 protease homodimers (chains A and B, 99 residues each). The interface between
the chains is elongated along the dimer's two-fold axis (its first principal axis is within 4° of the two-fold found by
superposing A on B), with the N/C-terminal β-sheet (residues 1–4 and 96–99 of both chains, the
"dimerisation domain") at one end and the active site and flap tips at the other. The default
motion is a clamshell opening: chain B turns rigidly about an axis through the centroid of the
terminal β-sheet, perpendicular to both the interface's long axis and the A→B centroid vector,
so the terminal sheet stays in contact while the active-site cleft opens (positive angles) or
closes (negative angles). Default angles 0° … +25° (opening only). In 4E43 at +25° the two catalytic
Asp25 move apart from 6 to 11 Å and each flap tip (Ile50) from the other chain's 80s loop (Pro81)
from 6 to 15 Å (the usual measures of an open cleft); chain B's flap tip travels about 10 Å, its
terminal strands about 3 Å. It is a rigid-body motion made to benchmark heterogeneity, not a
physical pathway: the crossed flap tips pass through each other (12–15 pairs of protein atoms
closer than 2.2 Å between +10° and +30°, at residues 49–51 and from +20° in the terminal sheet),
and closing is worse (10 pairs at −5°, 45 at −10°; none at 0°).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io.atomic import Atoms, read_atoms, select_atoms
from ..metrics.atomic import rmsd  # noqa: F401  (re-exported: the plain RMSD lives with the metrics)

TERMINAL_SHEET = (1, 2, 3, 4, 96, 97, 98, 99)  # HIV-1 protease dimerisation β-sheet


def sample_states(n: int, populations: Sequence[float], generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n,)`` long state indices drawn i.i.d. with probabilities ``populations`` (normalised)."""
    p = torch.as_tensor(populations, dtype=torch.float64).reshape(-1)
    if p.numel() == 0 or bool((p < 0).any()) or float(p.sum()) <= 0 or not bool(torch.isfinite(p).all()):
        raise InputError(f"populations {p.tolist()}: need non-negative numbers with a positive sum")
    return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)


def rotation_matrix(axis: Sequence[float], angle: float) -> np.ndarray:
    """``(3, 3)`` right-handed rotation by ``angle`` (radians) about ``axis`` (normalised here)."""
    u = np.asarray(axis, dtype=np.float64).reshape(3)
    n = np.linalg.norm(u)
    if not n > 0:
        raise InputError("hinge axis must be a non-zero vector")
    u = u / n
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)  # Rodrigues


def rotate_about_axis(atoms: Atoms, selection, axis: Sequence[float], pivot: Sequence[float],
                      angle: float) -> Atoms:
    """A copy of ``atoms`` with the selected atoms turned by ``angle`` (radians, right-handed
    about ``axis``) about the line through ``pivot`` (Å); the other atoms are untouched."""
    mask = select_atoms(atoms, selection)
    r = rotation_matrix(axis, angle)
    p = np.asarray(pivot, dtype=np.float64).reshape(3)
    coords = atoms.coords.copy()
    coords[mask] = (coords[mask] - p) @ r.T + p
    return atoms.with_coords(coords)


def hinge_trajectory(atoms: Atoms, selection, axis: Sequence[float], pivot: Sequence[float],
                     angles: Sequence[float]) -> list[Atoms]:
    """One model per angle (radians) of :func:`rotate_about_axis`, in the order given."""
    mask = select_atoms(atoms, selection)
    return [rotate_about_axis(atoms, mask, axis, pivot, float(a)) for a in angles]


@dataclass(frozen=True)
class Hinge:
    """A hinge: rotate ``selection`` about ``axis`` through ``pivot`` (Å) over ``angle_range``
    (degrees, the default range of a trajectory)."""

    selection: str
    axis: np.ndarray
    pivot: np.ndarray
    angle_range: tuple[float, float] = (0.0, 25.0)

    def trajectory(self, atoms: Atoms, n_states: int,
                   angle_range: tuple[float, float] | None = None) -> tuple[list[Atoms], np.ndarray]:
        """``n_states`` models at evenly spaced angles across ``angle_range`` (degrees, default
        the hinge's own); returns ``(models, angles in degrees)``."""
        lo, hi = self.angle_range if angle_range is None else angle_range
        if n_states < 1:
            raise InputError(f"number of states {n_states}: must be at least 1")
        deg = np.linspace(lo, hi, n_states) if n_states > 1 else np.array([0.5 * (lo + hi)])
        return hinge_trajectory(atoms, self.selection, self.axis, self.pivot, np.deg2rad(deg)), deg


def dimer_hinge(atoms: Atoms, moving: str = "B", fixed: str = "A",
                pivot_residues: Sequence[int] | None = None, contact: float = 4.0) -> Hinge:
    """Clamshell hinge of chain ``moving`` against chain ``fixed`` (module docstring).

    The interface is the atoms of either chain within ``contact`` Å of the other; its first
    principal axis ``u`` is its long direction and ``d`` the vector between the chain centroids.
    pivot: centroid of ``pivot_residues`` (author numbers) in both chains — for the bundled HIV-1
    protease models :data:`TERMINAL_SHEET`, see :func:`bundled_hinge` — or, by default, the end of
    the interface farther from its centroid along ``u``.
    axis: ``f × d`` normalised, ``f`` the unit vector along ``±u`` from the pivot towards the
    interface centroid, so a positive angle moves the far end of ``moving`` away from ``fixed``.
    """
    from scipy.spatial import cKDTree

    mov = select_atoms(atoms, moving)
    fix = select_atoms(atoms, fixed)
    xm, xf = atoms.coords[mov], atoms.coords[fix]
    near_m = np.array([len(v) > 0 for v in cKDTree(xf).query_ball_point(xm, contact)])
    near_f = np.array([len(v) > 0 for v in cKDTree(xm).query_ball_point(xf, contact)])
    iface = np.vstack([xm[near_m], xf[near_f]])
    if len(iface) < 4:
        raise InputError(f"{atoms.source or 'model'}: chains {moving} and {fixed} are not in contact "
                         f"(fewer than 4 atoms within {contact} Å); give the hinge explicitly")
    c = iface.mean(0)
    u = np.linalg.svd(iface - c, full_matrices=False)[2][0]
    d = xm.mean(0) - xf.mean(0)
    if pivot_residues is not None:
        sel = (mov | fix) & np.isin(atoms.residue_numbers, np.asarray(pivot_residues)) & ~atoms.het
        if not sel.any():
            raise InputError(f"{atoms.source or 'model'}: no atom in pivot residues {list(pivot_residues)}")
        pivot = atoms.coords[sel].mean(0)
    else:
        t = (iface - c) @ u
        pivot = c + u * (t.max() if abs(t.max()) > abs(t.min()) else t.min())
    f = u if (c - pivot) @ u >= 0 else -u
    axis = np.cross(f, d)
    return Hinge(selection=moving, axis=axis / np.linalg.norm(axis), pivot=pivot)


def bundled_hinge(atoms: Atoms) -> Hinge:
    """The default hinge of the bundled HIV-1 protease models (4E43, 1hvr): chain B against chain A
    about the terminal β-sheet (module docstring)."""
    return dimer_hinge(atoms, "B", "A", pivot_residues=TERMINAL_SHEET)


def trajectory_from_files(paths: Sequence[str | os.PathLike], waters: bool = False,
                          hydrogens: bool = True) -> list[Atoms]:
    """Read a trajectory given as model files (one state per file, in order). The models need
    not have the same atoms; they are used in their own frames (no superposition)."""
    if not paths:
        raise InputError("trajectory: no model files given")
    return [read_atoms(p, waters=waters, hydrogens=hydrogens) for p in paths]

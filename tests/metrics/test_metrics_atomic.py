"""Atomic-model distances against hand computations: a rigidly moved copy superposes to RMSD 0
(and Kabsch returns the rotation used); one displaced atom of a tetrahedron gives the RMSD derived
by hand; contact maps ignore rigid motion and count a broken contact."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryolens.metrics.atomic import contact_map_distance, kabsch, rmsd_superposed
from cryolens.simulate import bundled_model
from cryolens.io.atomic import read_atoms


def test_rmsd_of_a_rotated_copy_is_zero():
    """Bundled 4E43 atoms, rotated by a random rotation and translated: Kabsch returns that
    rotation and the superposed RMSD is 0 (the plain RMSD is large)."""
    atoms = read_atoms(bundled_model("4E43"))
    r = Rotation.random(random_state=3).as_matrix()
    moved = atoms.coords @ r.T + np.array([5.0, -7.0, 2.0])
    assert rmsd_superposed(moved, atoms.coords) < 1e-9
    r_fit, _ = kabsch(atoms.coords, moved)
    assert np.abs(r_fit - r).max() < 1e-9


def test_rmsd_of_one_displaced_atom_by_hand():
    """Four atoms at the corners of a regular tetrahedron (centroid at 0), one pushed outward along
    its own direction by d. By symmetry the best superposition is a translation along that direction
    by d/4 (no rotation helps: the displacement is along a 3-fold axis), leaving residuals
    3d/4 on the moved atom and d/4 on each of the others:
    RMSD = sqrt(((3d/4)² + 3 (d/4)²) / 4) = d·sqrt(12)/8."""
    x = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    d = 0.6
    y = x.copy()
    y[0] += d * x[0] / np.linalg.norm(x[0])
    assert rmsd_superposed(y, x) == pytest.approx(d * np.sqrt(12) / 8, rel=1e-9)


def test_contact_map_distance_ignores_rigid_motion_and_counts_a_broken_contact():
    """Three atoms: contacts (0,1) and (1,2) under an 8 Å cutoff. A rotated copy has distance 0;
    moving atom 2 away breaks one of the two contacts: 2 differing ordered pairs / 4 = 0.5."""
    x = np.array([[0.0, 0, 0], [5.0, 0, 0], [10.0, 0, 0]])
    r = Rotation.random(random_state=1).as_matrix()
    assert contact_map_distance(x @ r.T, x) == 0.0
    y = x.copy()
    y[2, 0] = 20.0
    assert contact_map_distance(y, x) == pytest.approx(0.5)

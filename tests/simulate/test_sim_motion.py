"""Conformational motions: the hinge is a rigid rotation of exactly the selected atoms by the given
angle; populations are respected; the default hinge of the bundled model opens the dimer."""

import math

import numpy as np
import pytest
import torch

from cryolens.errors import InputError
from cryolens.io.atomic import read_atoms
from cryolens.simulate import (bundled_hinge, bundled_model, hinge_trajectory, rmsd, rotate_about_axis,
                               sample_states, select_atoms)


@pytest.fixture(scope="module")
def model():
    return read_atoms(bundled_model("4E43"))


def test_hinge_moves_only_the_selection_by_the_angle(model):
    """Rotating residues 43–58 of chain B by θ about an axis through a pivot: the other atoms do not
    move; each moved atom keeps its distance to the axis and moves by 2·r⊥·sin(θ/2); the whole-model
    RMSD equals sqrt(Σ (2 r⊥ sin(θ/2))² / M); and Kabsch on the moved atoms recovers θ and the axis."""
    axis = np.array([1.0, 2.0, -0.5])
    u = axis / np.linalg.norm(axis)
    pivot = np.array([10.0, 25.0, 20.0])
    theta = math.radians(23.0)
    sel = select_atoms(model, "B:43-58")
    assert 0 < sel.sum() < len(model)
    moved = rotate_about_axis(model, "B:43-58", axis, pivot, theta)
    assert np.array_equal(moved.coords[~sel], model.coords[~sel])
    rel = model.coords[sel] - pivot
    r_perp = np.linalg.norm(rel - np.outer(rel @ u, u), axis=1)
    rel_new = moved.coords[sel] - pivot
    assert np.allclose(np.linalg.norm(rel_new - np.outer(rel_new @ u, u), axis=1), r_perp)
    assert np.allclose(np.linalg.norm(moved.coords[sel] - model.coords[sel], axis=1), 2 * r_perp * math.sin(theta / 2))
    expected = math.sqrt((4 * r_perp ** 2 * math.sin(theta / 2) ** 2).sum() / len(model))
    assert rmsd(model, moved) == pytest.approx(expected, rel=1e-10)
    # Kabsch: best rotation taking the original selection onto the moved one
    p, q = rel - rel.mean(0), rel_new - rel_new.mean(0)
    w, _, vt = np.linalg.svd(p.T @ q)
    r = (w @ np.diag([1, 1, np.sign(np.linalg.det(w @ vt))]) @ vt).T
    assert math.degrees(math.acos((np.trace(r) - 1) / 2)) == pytest.approx(23.0, abs=1e-6)
    axis_est = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    assert np.allclose(axis_est / np.linalg.norm(axis_est), u)  # right-handed about +axis
    assert np.array_equal(model.coords, read_atoms(bundled_model("4E43")).coords)  # input untouched


def test_trajectory_rmsd_grows_with_angle(model):
    """A trajectory of angles 0, 10, 20° about a fixed hinge: RMSD to the start is 0 and grows as
    sin(θ/2) (ratio sin 10° / sin 5°)."""
    traj = hinge_trajectory(model, "B", [0, 0, 1], model.center_of_mass(), np.deg2rad([0, 10, 20]))
    d = [rmsd(model, t) for t in traj]
    assert d[0] < 1e-12
    assert d[2] / d[1] == pytest.approx(math.sin(math.radians(10)) / math.sin(math.radians(5)), rel=1e-9)


def test_selection_syntax(model):
    """Chain, residue range and union selections pick exactly the atoms the arrays say; a selection
    matching nothing is an input error."""
    assert np.array_equal(select_atoms(model, "A"), model.chain_ids == "A")
    rng = (model.chain_ids == "B") & (model.residue_numbers >= 43) & (model.residue_numbers <= 58)
    assert np.array_equal(select_atoms(model, "B:43-58"), rng)
    assert np.array_equal(select_atoms(model, "A,B:43-58"), rng | (model.chain_ids == "A"))
    with pytest.raises(InputError):
        select_atoms(model, "Z")
    with pytest.raises(InputError):
        select_atoms(model, "B:x-y")


def test_sample_states_respects_populations():
    """20,000 draws with populations (1, 3, 6) give frequencies within 4 binomial σ of (0.1, 0.3, 0.6)."""
    g = torch.Generator().manual_seed(3)
    labels = sample_states(20000, [1, 3, 6], g)
    freq = np.bincount(labels.numpy(), minlength=3) / 20000
    p = np.array([0.1, 0.3, 0.6])
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 20000))


def test_bundled_hinge_opens_the_active_site(model):
    """The default 4E43 hinge at +20°: the catalytic Asp25 of the two chains move apart (6 → 10 Å) and
    each flap tip (Ile50) moves away from the other chain's 80s loop (Pro81), the usual measures of an
    open cleft; chain A stays in place; the terminal β-sheet (the pivot) moves much less than the
    flap tip."""
    h = bundled_hinge(model)
    (opened,), _ = h.trajectory(model, 1, (20.0, 20.0))

    def centre(coords, chain, res):
        sel = (model.chain_ids == chain) & np.isin(model.residue_numbers, res) & ~model.het
        return coords[sel].mean(0)

    def dist(coords, a, b):
        return np.linalg.norm(centre(coords, *a) - centre(coords, *b))

    for a, b in [(("A", [25]), ("B", [25])), (("A", [50]), ("B", [81])), (("B", [50]), ("A", [81]))]:
        assert dist(opened.coords, a, b) > dist(model.coords, a, b) + 3.0
    chain_a = model.chain_ids == "A"
    assert np.array_equal(opened.coords[chain_a], model.coords[chain_a])
    move_term = np.linalg.norm(centre(opened.coords, "B", [1, 2, 98, 99]) - centre(model.coords, "B", [1, 2, 98, 99]))
    move_flap = np.linalg.norm(centre(opened.coords, "B", [50]) - centre(model.coords, "B", [50]))
    assert move_term < 0.5 * move_flap

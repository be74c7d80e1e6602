"""The heterogeneity generators of real structures (simulate/kinds.py) against independent facts: the
screw axis of a move built from a known axis, point and angle; adenylate kinase's LID turned about the
computed axis lands on the open structure's LID; a twist is rigid, leaves the fixed chain alone and turns
by the angle asked for about its axis; an assembly's maps are its chains' maps summed (computed directly);
a mixture centres each structure on its own centre of mass."""

import numpy as np
import pytest
import torch

from cryolens.errors import InputError
from cryolens.metrics.atomic import kabsch, rmsd
from cryolens.simulate import atoms_to_volume, rotation_matrix, select_atoms
from cryolens.simulate.kinds import (ADK_CORE, ADK_LID, _paired_ca, _read, domain_motion_hinge, screw_axis, state_set,
                                     state_volumes)


def test_screw_axis_recovers_a_known_move():
    """x → R(x − p) + p + s·u (rotation by 70° about the line through p along u, then a slide s along
    it): the axis, the point of the line nearest the origin and the angle come back."""
    u = np.array([1.0, 2.0, -2.0]) / 3.0
    p = np.array([4.0, -1.0, 3.0])
    p = p - (p @ u) * u  # the point of the line nearest the origin
    r = rotation_matrix(u, np.deg2rad(70.0))
    t = p - r @ p + 2.5 * u
    axis, point, angle = screw_axis(r, t)
    np.testing.assert_allclose(axis, u, atol=1e-12)
    np.testing.assert_allclose(point, p, atol=1e-9)
    assert angle == pytest.approx(70.0, abs=1e-9)
    with pytest.raises(InputError, match="does not rotate"):
        screw_axis(np.eye(3), np.ones(3))


def test_adenylate_kinase_lid_axis_reproduces_the_open_form():
    """The LID of closed AK (1AKE) turned about the computed axis by the computed angle sits on the LID of
    open AK (4AKE, superposed on the CORE) to within 1.5 Å Cα RMSD, from 15 Å before; the angle is the
    known size of the LID closure (40-60°)."""
    closed, open_ = _read("1ake"), _read("4ake")
    hinge, angle = domain_motion_hinge(closed, open_, ADK_LID, ADK_CORE)
    assert 40.0 < angle < 60.0
    moved = hinge.trajectory(closed, 2, (0.0, angle))[0][1]
    fm, fr = _paired_ca(closed, open_, ADK_CORE)
    r, t = kabsch(fr, fm)
    a0, b0 = _paired_ca(closed, open_, ADK_LID)
    a, b = _paired_ca(moved, open_, ADK_LID)
    assert rmsd(a0, b0 @ r.T + t) > 10.0 and rmsd(a, b @ r.T + t) < 1.5


def test_interface_twist_is_rigid_and_turns_by_the_angle():
    """The 3HSY NTD twist at 90°: chain A unmoved, chain B moved rigidly, and the Kabsch rotation from B at
    0° to B at 90° is 90° about the hinge axis."""
    spec = {"generator": "swing", "model": "3hsy", "axis": "interface", "moving": "B", "fixed": "A",
            "n_states": 3, "angle_range": [0, 180]}
    st = state_set(spec)
    assert st.value_name == "swing_angle_deg" and st.values.tolist() == [0.0, 90.0, 180.0]
    a0, a1 = st.models[0], st.models[1]
    fixed, moving = select_atoms(a0, "A"), select_atoms(a0, "B")
    np.testing.assert_array_equal(a1.coords[fixed], a0.coords[fixed])
    r, t = kabsch(a0.coords[moving], a1.coords[moving])
    assert rmsd(a0.coords[moving] @ r.T + t, a1.coords[moving]) < 1e-9
    assert np.degrees(np.arccos((np.trace(r) - 1) / 2)) == pytest.approx(90.0, abs=1e-6)
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    c = a0.coords[moving].mean(0) - a0.coords[fixed].mean(0)
    assert abs(w / np.linalg.norm(w) @ (c / np.linalg.norm(c))) == pytest.approx(1.0, abs=1e-9)


def test_assembly_maps_are_chain_sums_in_one_frame():
    """Compositions of the 4E43 complex (protease chains A, B and peptide C; small, so fast): each state's
    model holds exactly its chains' atoms, every state is centred on the full complex's centre of mass, and
    the summed-parts map equals the composition's map computed directly (D = 16)."""
    comps = [["A", "C"], ["A"], ["B", "C"]]
    st = state_set({"generator": "assembly", "model": "4E43", "compositions": comps, "populations": [.6, .3, .1]})
    full = _read("4E43")
    for comp, m in zip(comps, st.models):
        assert len(m) == int(np.isin(full.chain_ids, comp).sum())
        np.testing.assert_allclose(st.centres, np.tile(full.center_of_mass(), (3, 1)))
    vols = state_volumes(st, 16, 5.0)
    direct = atoms_to_volume(st.models[0], 16, 5.0, full.center_of_mass())
    torch.testing.assert_close(vols[0], direct, rtol=1e-4, atol=1e-5 * float(direct.abs().max()))
    with pytest.raises(InputError, match="populations"):
        state_set({"generator": "assembly", "model": "4E43", "compositions": comps, "populations": [1.0]})


def test_mixture_centres_each_structure():
    """Each structure of a mixture is centred on its own centre of mass; a selection keeps one chain."""
    st = state_set({"generator": "mixture", "models": ["1ubi", "3hsy:A"]})
    assert set(st.models[1].chain_ids) == {"A"}
    for m, c in zip(st.models, st.centres):
        np.testing.assert_allclose(c, m.center_of_mass())
    with pytest.raises(InputError, match="generator"):
        state_set({"generator": "nope"})

"""Cyclic groups and the symmetry axis of a map (imaging/symmetry.py): the operators form the group, the
axis of a map made exactly Cn-symmetric about a random axis is found to a fraction of a degree, and the
pseudo two-fold of the bundled HIV-1 protease dimer is found on its simulated map, against the axis of
the Kabsch superposition of its two chains (an independent computation from the atoms)."""

import math

import pytest
import torch

from cryolens.errors import InputError
from cryolens.imaging.gaussian import gaussian_volume
from cryolens.imaging.rotations import matrix_to_rotvec
from cryolens.imaging.symmetry import cyclic_operators, cyclic_order, symmetry_axis, symmetry_scores


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two axes (an axis and its opposite are the same)."""
    c = abs(float(a @ b) / float(a.norm() * b.norm()))
    return math.degrees(math.acos(min(1.0, c)))


def test_cyclic_group_names_and_operators():
    assert cyclic_order("C1") == 1 and cyclic_order("c4") == 4
    for bad in ("D2", "O", "C0", "C"):
        with pytest.raises(InputError, match="cyclic"):
            cyclic_order(bad)
    u = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    ops = cyclic_operators(5, u)
    assert ops.shape == (4, 3, 3)
    torch.testing.assert_close(torch.linalg.det(ops), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(ops @ (u / u.norm()), (u / u.norm()).expand(4, 3))  # the axis is fixed
    torch.testing.assert_close(torch.linalg.matrix_power(ops[0], 5), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(ops[0] @ ops[0], ops[1])  # G² is the next element


@pytest.mark.parametrize("n", [2, 3])
def test_axis_of_an_exactly_symmetric_map(n):
    """Six random Gaussian blobs and their images under Cn about a random axis through D//2 (D = 32):
    the axis found is within 0.5° of the true one, with a score near 1; an axis perpendicular to it
    scores far lower."""
    g = torch.Generator().manual_seed(n)
    u = torch.randn(3, generator=g, dtype=torch.float64)
    u = u / u.norm()
    pts = torch.randn(6, 3, generator=g, dtype=torch.float64) * 5
    centres = torch.cat([pts] + [pts @ op.T for op in cyclic_operators(n, u)])  # (x, y, z) voxels from D//2
    vol = gaussian_volume(centres, torch.full((len(centres),), 2.0, dtype=torch.float64),
                          torch.ones(len(centres), dtype=torch.float64), 32).float()
    axis, score = symmetry_axis(vol, n)
    assert _angle_deg(axis, u) < 0.5
    assert score > 0.99
    other = torch.linalg.cross(u, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert float(symmetry_scores(vol, n, other[None])[0]) < 0.8


def test_pseudo_two_fold_of_the_protease_dimer():
    """The simulated map of bundled 4E43 (D = 48, 2 Å/px): the C2 axis found on the map is within 2° of
    the rotation axis of the Kabsch superposition of chain B's Cα on chain A's."""
    from cryolens.bench.scoring import symmetry_operators
    from cryolens.io.atomic import read_atoms
    from cryolens.simulate import bundled_model
    from cryolens.simulate.density import atoms_to_volume

    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), 48, 2.0)
    ops = symmetry_operators(bundled_model("4E43"))
    assert len(ops) == 2
    rv = matrix_to_rotvec(ops[1])
    assert abs(math.degrees(float(rv.norm())) - 180) < 5  # a two-fold
    axis, score = symmetry_axis(vol, 2)
    assert _angle_deg(axis, rv) < 2.0
    assert score > 0.8

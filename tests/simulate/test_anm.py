"""The elastic-network (ANM) normal modes against independent computations: the Hessian against central
finite differences of the network's energy, the six rigid-body zero modes of a real structure against
explicit translation and rotation vectors, and the trajectory's Cα RMSD against the amplitude asked for."""

import numpy as np
import pytest

from cryolens.errors import InputError
from cryolens.io.atomic import read_atoms
from cryolens.metrics.atomic import backbone_ca, rmsd
from cryolens.simulate import bundled_model
from cryolens.simulate.anm import anm_hessian, anm_modes, anm_trajectory, enm_energy, residue_of_atoms


def test_hessian_matches_finite_differences_of_the_energy():
    """Every entry of the analytic Hessian equals the central second difference of E (float64, step
    1e-4 Å) on a random 10-node network where the cutoff leaves some pairs unjoined."""
    rng = np.random.default_rng(3)
    x0 = rng.uniform(0, 12, size=(10, 3))
    cutoff, h = 9.0, 1e-4
    d = np.linalg.norm(x0[:, None] - x0[None], axis=-1)
    assert 0 < (d[np.triu_indices(10, 1)] > cutoff).sum() < 45  # some, not all, pairs are cut
    hess = anm_hessian(x0, cutoff=cutoff, gamma=2.0)
    flat = x0.reshape(-1)
    fd = np.zeros_like(hess)

    def e(a, b, da, db):
        y = flat.copy()
        y[a] += da
        y[b] += db
        return enm_energy(y.reshape(-1, 3), x0, cutoff, gamma=2.0)

    for a in range(30):
        for b in range(30):
            fd[a, b] = (e(a, b, h, h) - e(a, b, h, -h) - e(a, b, -h, h) + e(a, b, -h, -h)) / (4 * h * h)
    np.testing.assert_allclose(hess, fd, atol=2e-5)


def test_six_zero_modes_are_the_rigid_body_motions():
    """Ubiquitin's Cα network (76 nodes, 15 Å): exactly six zero eigenvalues; three translations and
    three infinitesimal rotations (ω × r) are annihilated by the Hessian; the non-trivial modes are unit
    vectors orthogonal to all six."""
    ca = backbone_ca(read_atoms(bundled_model("1ubi"))).coords
    hess = anm_hessian(ca)
    w = np.linalg.eigvalsh(hess)
    assert np.all(np.abs(w[:6]) < 1e-8 * w[-1]) and w[6] > 1e-4 * w[-1]
    rigid = [np.tile(e, (len(ca), 1)).reshape(-1) for e in np.eye(3)]
    rigid += [np.cross(e, ca - ca.mean(0)).reshape(-1) for e in np.eye(3)]
    for v in rigid:
        assert np.linalg.norm(hess @ v) < 1e-9 * np.linalg.norm(v) * w[-1]
    nm = anm_modes(ca, n_modes=5)
    m = nm.modes.reshape(5, -1)
    np.testing.assert_allclose(m @ m.T, np.eye(5), atol=1e-10)
    basis = np.linalg.qr(np.stack(rigid, 1))[0]
    assert np.abs(m @ basis).max() < 1e-8
    assert np.all(np.diff(nm.eigenvalues) >= 0) and nm.eigenvalues[0] > 0


def test_trajectory_rmsd_and_atoms_follow_their_residue():
    """Along the lowest mode of open adenylate kinase the Cα RMSD to the start equals |amplitude|, and
    every atom of a residue moves by exactly its Cα's displacement."""
    atoms = read_atoms(bundled_model("4ake"))
    models, nm = anm_trajectory(atoms, 0, [-3.0, 0.0, 2.0])
    ca0 = backbone_ca(atoms).coords
    for a, m in zip([-3.0, 0.0, 2.0], models):
        assert rmsd(backbone_ca(m).coords, ca0) == pytest.approx(abs(a), abs=1e-9)
    res = residue_of_atoms(atoms, backbone_ca(atoms))
    disp = models[2].coords - atoms.coords
    ca_disp = backbone_ca(models[2]).coords - ca0
    np.testing.assert_allclose(disp, ca_disp[res], atol=1e-9)


def test_disconnected_network_is_refused():
    """Two clusters farther apart than the cutoff: more than six zero modes, one clear error."""
    x = np.vstack([np.random.default_rng(0).normal(size=(6, 3)), np.random.default_rng(1).normal(size=(6, 3)) + 50])
    with pytest.raises(InputError, match="more than six zero modes"):
        anm_modes(x, cutoff=10.0)

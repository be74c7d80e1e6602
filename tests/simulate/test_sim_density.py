"""Atomic model → map: the form-factor identities, the grid convention, and gemmi's own
DensityCalculatorE as the outside reference."""

import gemmi
import numpy as np
import pytest
import torch

from cryolens.errors import InputError
from cryolens.imaging import fft3_centered
from cryolens.imaging.grids import freq_grid_3d
from cryolens.io.atomic import Atoms, read_atoms
from cryolens.simulate import (atoms_to_volume, bundled_model, default_blur, form_factor, form_factor_coefficients,
                               resample_map)

ELEMENTS = ["H", "C", "N", "O", "S", "P", "Fe"]


@pytest.mark.parametrize("element", ELEMENTS)
def test_single_atom_integrates_to_form_factor_at_zero(element, device):
    """Σ voxels × voxel volume of one atom = f(0) = Σ a_i (gemmi's c4322 table), for an atom off the
    grid points: ∫ρ = f(0) is an identity of the Gaussian sum, the sampling must not break it."""
    a = sum(gemmi.Element(element).c4322.a)
    atom = Atoms([[0.37, -0.21, 0.45]], [element])
    px = 1.0
    vol = atoms_to_volume(atom, 32, px, center=[0, 0, 0], blur=50.0, device=device, dtype=torch.float64)
    assert vol.device.type == device.type
    assert float(vol.sum()) * px ** 3 == pytest.approx(a, rel=1e-4)
    # the default blur keeps the point-sampling error below 1 % at any sub-voxel position
    vol = atoms_to_volume(atom, 32, px, center=[0, 0, 0], device=device, dtype=torch.float64)
    assert float(vol.sum()) * px ** 3 == pytest.approx(a, rel=1e-2)


@pytest.mark.parametrize("blur, k_max, tol", [(40.0, 0.2, 1e-3), (None, 0.25, 0.04)])
def test_voxelised_atom_transform_matches_analytic_form_factor(blur, k_max, tol):
    """|FFT| of a sampled atom at the centre voxel equals f(k)·exp(−B k²/4) = Σ a_i exp(−(b_i+B) k²/4)
    (the form factor, computed independently from gemmi's coefficients) at low k: to 0.1 % up to
    0.2 1/Å with B = 40 Å², to 4 % up to half Nyquist with the default blur (its aliasing, as the
    module documents). The same comparison with B off by 10 Å² fails."""
    px, d = 1.0, 48
    b_total = default_blur(px) if blur is None else blur
    vol = atoms_to_volume(Atoms([[0.0, 0.0, 0.0]], ["C"]), d, px, center=[0, 0, 0], blur=blur, dtype=torch.float64)
    mag = (fft3_centered(vol).abs() * px ** 3).reshape(-1)
    k = (freq_grid_3d(d, dtype=torch.float64).norm(dim=-1) / px).reshape(-1)  # 1/Å
    low = k <= k_max
    a = torch.tensor(gemmi.Element("C").c4322.a, dtype=torch.float64)
    b = torch.tensor(gemmi.Element("C").c4322.b, dtype=torch.float64)
    analytic = (a[:, None] * torch.exp(-(b[:, None] + b_total) * k[low] ** 2 / 4)).sum(0)
    assert ((mag[low] - analytic).abs() / analytic).max() < tol
    wrong = (a[:, None] * torch.exp(-(b[:, None] + b_total + 10) * k[low] ** 2 / 4)).sum(0)
    assert ((mag[low] - wrong).abs() / wrong).max() > 0.1
    # and the module's own form_factor says the same
    assert torch.allclose(form_factor(["C"], k[low], b_total)[0], analytic)


def test_grid_convention_xyz_to_zyx():
    """An atom at centre + (3, −2, 5) Å with 1 Å voxels peaks at voxel [z, y, x] = D//2 + (5, −2, 3):
    volumes are indexed [z, y, x] and voxel D//2 holds the centre."""
    d = 32
    centre = np.array([10.0, 20.0, 30.0])
    atom = Atoms([centre + [3.0, -2.0, 5.0]], ["O"])
    vol = atoms_to_volume(atom, d, 1.0, center=centre)
    assert np.unravel_index(int(vol.argmax()), vol.shape) == (d // 2 + 5, d // 2 - 2, d // 2 + 3)


def test_default_centre_is_centre_of_mass():
    """Without a centre, the mass-weighted centre of the atoms lands on voxel D//2: for two atoms of
    very different mass (S, H) the density's first moment sits at the S-weighted point."""
    atoms = Atoms([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]], ["S", "C"])
    com = atoms.center_of_mass()
    ms, mc = gemmi.Element("S").weight, gemmi.Element("C").weight
    assert com[0] == pytest.approx(4 * mc / (ms + mc))
    vol = atoms_to_volume(atoms, 32, 0.5, blur=20.0).double()
    x = (torch.arange(32, dtype=torch.float64) - 16) * 0.5 + com[0]
    # first moment of the density along x: Σ_atoms f_e(0)·x_atom / Σ f_e(0)
    fs, fc = sum(gemmi.Element("S").c4322.a), sum(gemmi.Element("C").c4322.a)
    expected = (0 * fs + 4 * fc) / (fs + fc)
    assert float((vol.sum((0, 1)) * x).sum() / vol.sum()) == pytest.approx(expected, abs=1e-3)


def _gemmi_map(path, chain, box, px, blur, centre):
    st = gemmi.read_structure(str(path))
    st.remove_waters()
    for ch in list(st[0]):
        if ch.name != chain:
            st[0].remove_chain(ch.name)
    shift = -np.asarray(centre) + box // 2 * px  # gemmi's grid point i sits at i·px
    for ch in st[0]:
        for res in ch:
            for at in res:
                at.pos = gemmi.Position(*(np.array(at.pos.tolist()) + shift))
    st.cell = gemmi.UnitCell(box * px, box * px, box * px, 90, 90, 90)
    dc = gemmi.DensityCalculatorE()
    dc.grid.unit_cell = st.cell
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(box, box, box)
    dc.blur = blur
    dc.put_model_density_on_grid(st[0])
    return np.array(dc.grid, copy=True).transpose(2, 1, 0)  # gemmi [x, y, z] → [z, y, x]


def test_matches_gemmi_density_calculator():
    """Chain A of 1HVR (one protease monomer, 968 atoms, B-factors and alternate conformations) in a
    cell equal to the box: our map and gemmi's DensityCalculatorE (same c4322 factors, atom B +
    blur) correlate at ≥ 0.99 and agree to 0.1 % of the peak."""
    path = bundled_model("1hvr")
    atoms = read_atoms(path)
    atoms = atoms.subset(atoms.chain_ids == "A")
    box, px, blur = 48, 1.5, 40.0
    centre = atoms.center_of_mass()
    ours = atoms_to_volume(atoms, box, px, blur=blur, use_bfactors=True).double().numpy()
    ref = _gemmi_map(path, "A", box, px, blur, centre)
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] >= 0.99
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()


def test_unknown_element_and_odd_box_are_input_errors():
    """Bad input raises InputError, not a crash inside torch."""
    with pytest.raises(InputError):
        form_factor_coefficients(["Xx"])
    with pytest.raises(InputError):
        atoms_to_volume(Atoms([[0.0, 0.0, 0.0]], ["C"]), 31, 1.0)


def test_resample_map_same_and_new_pixel_size():
    """Same pixel size: a central crop / zero pad keeps voxel values. New pixel size: a smooth map
    of known analytic form (a Gaussian blob) is reproduced on the new grid to 1 %."""
    d, px = 32, 1.0
    r2 = ((freq_grid_3d(d, dtype=torch.float64) * d * px) ** 2).sum(-1)
    vol = torch.exp(-r2 / (2 * 4.0 ** 2)).float()
    pad = resample_map(vol, px, 48)
    assert torch.equal(pad[8:40, 8:40, 8:40], vol)
    assert torch.equal(resample_map(pad, px, 32), vol)
    new = resample_map(vol, px, 24, 1.5)
    r2n = ((freq_grid_3d(24, dtype=torch.float64) * 24 * 1.5) ** 2).sum(-1)
    expected = torch.exp(-r2n / (2 * 4.0 ** 2))
    assert float((new.double() - expected).abs().max()) < 0.01

"""The hierarchical SO(3) grid (HEALPix × in-plane angles), each property checked independently."""

import math

import pytest
import torch

from cryolens.errors import InputError
from cryolens.imaging.rotations import euler_to_matrix, geodesic_distance, random_rotations
from cryolens.imaging.so3_grid import (angular_step, children, grid_euler, grid_size, healpix_pix2ang,
                                       local_grid, n_pixels, n_psi, nearest, parent, so3_grid)


def _unit(theta, phi):
    return torch.stack([torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)], -1)


def _ring_centres(nside):
    """Pixel centres of the HEALPix RING scheme written straight from Górski et al. (2005), §4:
    north cap rings i = 1..nside−1 have z = 1 − i²/(3 nside²), φ = π/(2i)·(j − ½), j = 1..4i;
    equatorial rings i = nside..3 nside have z = 4/3 − 2i/(3 nside), φ = π/(2 nside)·(j − s/2),
    s = (i − nside + 1) mod 2, j = 1..4 nside; the south cap mirrors the north."""
    zs, phis = [], []
    for i in range(1, nside):
        for sign in (1, -1):
            j = torch.arange(1, 4 * i + 1, dtype=torch.float64)
            zs.append(torch.full_like(j, sign * (1 - i * i / (3 * nside * nside))))
            phis.append(math.pi / (2 * i) * (j - 0.5))
    for i in range(nside, 3 * nside + 1):
        j = torch.arange(1, 4 * nside + 1, dtype=torch.float64)
        s = (i - nside + 1) % 2
        zs.append(torch.full_like(j, 4 / 3 - 2 * i / (3 * nside)))
        phis.append(math.pi / (2 * nside) * (j - s / 2))
    z, phi = torch.cat(zs), torch.cat(phis)
    return _unit(torch.acos(z), phi)


def test_grid_sizes_match_cryodrgn_hopf_grid():
    """cryoDRGN's Hopf grid has 12·4^L HEALPix pixels × 6·2^L in-plane angles: 72, 576, 4 608, 36 864."""
    assert [grid_size(L) for L in range(4)] == [72, 576, 4608, 36864]
    assert [n_pixels(L) for L in range(3)] == [12, 48, 192]
    assert [n_psi(L) for L in range(3)] == [6, 12, 24]
    assert so3_grid(1).shape == (576, 3, 3)
    assert so3_grid(2).shape == (4608, 3, 3)


def test_healpix_base_pixel_centres():
    """Nside = 1 (Górski et al. 2005, Fig. 3): the 12 base pixels have equal area 4π/12; the polar
    caps |z| > 2/3 have area 2π/3 each, i.e. half of each of the 4 polar base pixels, whose centres lie
    on the circles z = ±2/3 at φ = π/4 + kπ/2 (faces 0–3 north, 8–11 south); the 4 equatorial base
    pixels are centred on the equator at φ = kπ/2 (faces 4–7)."""
    theta, phi = healpix_pix2ang(1, torch.arange(12))
    z = torch.cos(theta)
    k = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(z, torch.tensor([2 / 3] * 4 + [0.0] * 4 + [-2 / 3] * 4, dtype=torch.float64))
    torch.testing.assert_close(phi, torch.cat([math.pi / 4 + k * math.pi / 2, k * math.pi / 2,
                                               math.pi / 4 + k * math.pi / 2]))


@pytest.mark.parametrize("nside", [1, 2, 4, 8, 16])
def test_healpix_nested_centres_equal_ring_formula(nside):
    """The nested pix2ang gives exactly the pixel-centre set of the RING-scheme formulas (written
    independently in ``_ring_centres``), each ring centre once."""
    theta, phi = healpix_pix2ang(nside, torch.arange(12 * nside * nside))
    ours = _unit(theta, phi)
    ref = _ring_centres(nside)
    assert ref.shape == ours.shape
    cos = ours @ ref.T
    best = cos.argmax(1)
    assert torch.all(cos.max(1).values > 1 - 1e-12)
    assert torch.equal(best.sort().values, torch.arange(len(ref)))  # a bijection


@pytest.mark.parametrize("nside", [1, 2, 4, 8])
def test_healpix_nested_layout_of_subpixels(nside):
    """NESTED numbering (Górski et al. 2005, §4; the nested index interleaves the north-east (even
    bits) and north-west (odd bits) steps from a face's south corner): the 4 sub-pixels of pixel p are
    4p..4p+3 with 4p the southernmost, 4p+3 the northernmost, 4p+1 east of 4p+2 — and all of them lie
    within one parent pixel size of p's centre."""
    parents = torch.arange(12 * nside * nside)
    pt, pp = healpix_pix2ang(nside, parents)
    ct, cp = healpix_pix2ang(2 * nside, 4 * parents[:, None] + torch.arange(4))
    z = torch.cos(ct)
    assert torch.all(z[:, 3] > z[:, 1] + 1e-12) and torch.all(z[:, 3] > z[:, 2] + 1e-12)
    assert torch.all(z[:, 1] > z[:, 0] + 1e-12) and torch.all(z[:, 2] > z[:, 0] + 1e-12)
    east = torch.remainder(cp[:, 1] - cp[:, 2] + math.pi, 2 * math.pi) - math.pi
    assert torch.all(east > 0)
    ang = torch.acos((_unit(ct, cp) * _unit(pt, pp)[:, None]).sum(-1).clamp(-1, 1))
    assert ang.max() < math.sqrt(4 * math.pi / (12 * nside * nside))


@pytest.mark.parametrize("nside", [1, 4, 32])
def test_healpix_directions_are_balanced(nside):
    """Equal-area pixels on the whole sphere: the pixel centres average to the origin, and their
    second moment tends to that of the uniform distribution, E[n nᵀ] = I/3, with an O(1/nside²) error."""
    theta, phi = healpix_pix2ang(nside, torch.arange(12 * nside * nside))
    v = _unit(theta, phi)
    assert v.mean(0).abs().max() < 1e-12
    second = v.T @ v / len(v)
    assert (second - torch.eye(3, dtype=torch.float64) / 3).abs().max() < 0.05 / nside**2
    assert (theta.min() >= 0) and (theta.max() <= math.pi) and (phi.min() >= 0) and (phi.max() < 2 * math.pi)


def test_healpix_rejects_bad_nside_and_indices():
    """Nested indices exist only for power-of-two Nside, and pixel indices are integers."""
    with pytest.raises(InputError, match="power of two"):
        healpix_pix2ang(3, torch.arange(4))
    with pytest.raises(InputError, match="integers"):
        healpix_pix2ang(2, torch.zeros(3))
    with pytest.raises(InputError, match="level"):
        so3_grid(-1)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_grid_rotations_are_proper_and_documented(level, device):
    """Every grid matrix is a proper rotation (RᵀR = I, det = +1); R·ẑ is the HEALPix direction of
    its pixel; grid_euler's angles rebuild the same matrices through RELION's ZYZ convention; points
    are distinct; rotations of selected indices equal those rows of the full grid."""
    g = so3_grid(level, device=device, dtype=torch.float64)
    assert g.device.type == device.type
    eye = torch.eye(3, dtype=torch.float64, device=device)
    assert (g.transpose(-1, -2) @ g - eye).abs().max() < 1e-12
    assert (torch.linalg.det(g) - 1).abs().max() < 1e-12
    pix = torch.arange(grid_size(level), device=device) // n_psi(level)
    theta, phi = healpix_pix2ang(2**level, pix)
    torch.testing.assert_close(g[:, :, 2], _unit(theta, phi))
    torch.testing.assert_close(euler_to_matrix(*grid_euler(level, device=device)), g)
    sel = torch.tensor([0, 5, grid_size(level) - 1, 17], device=device)
    torch.testing.assert_close(so3_grid(level, dtype=torch.float64, indices=sel), g[sel])
    if level <= 1:
        d = geodesic_distance(g[:, None], g[None]) + 10 * torch.eye(len(g), dtype=torch.float64, device=device)
        assert d.min() > 0.3 * math.radians(angular_step(level))
    assert so3_grid(level, device=device).dtype == torch.float32


def test_grid_second_moment_tends_to_haar():
    """For the Haar measure E[R_ij R_kl] = δ_ik δ_jl / 3 (Schur orthogonality); the grid's empirical
    moment approaches it, the error falling about 4× per level (equal-volume cells)."""
    errs = []
    for level in range(4):
        f = so3_grid(level, dtype=torch.float64).reshape(-1, 9)
        errs.append(float((f.T @ f / len(f) - torch.eye(9, dtype=torch.float64) / 3).abs().max()))
    assert errs[-1] < 1e-3
    assert all(a > 3 * b for a, b in zip(errs, errs[1:]))


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_children_are_close_to_their_parent(level):
    """The 8 children (4 HEALPix sub-pixels × 2 in-plane halves) of every grid point lie within
    angular_step(level) of it (measured: at most 0.73× up to level 8; a grid in plain ZYZ Euler angles
    fails this near the poles by 22.5°), the 8·M children are all level-(L+1) points exactly once,
    and parent() inverts children()."""
    idx = torch.arange(grid_size(level))
    ch = children(level, idx)
    assert ch.shape == (grid_size(level), 8)
    assert torch.equal(ch.flatten().sort().values, torch.arange(grid_size(level + 1)))
    assert torch.equal(parent(level + 1, ch), idx[:, None].expand(-1, 8))
    d = geodesic_distance(so3_grid(level, dtype=torch.float64)[:, None],
                          so3_grid(level + 1, dtype=torch.float64, indices=ch))
    assert math.degrees(d.max()) < angular_step(level)
    assert math.degrees(d.max()) > 0.3 * angular_step(level)  # children are not the parent itself


@pytest.mark.parametrize("level", [1, 2, 3])
def test_grid_covers_so3(level):
    """Every one of 2,000 Haar-random rotations has a grid point within 0.9 × angular_step(level)
    (measured 0.75–0.79×), and the mean distance to the nearest point is about 0.47× the step, halving
    per level."""
    gen = torch.Generator().manual_seed(11)
    rots = random_rotations(2000, generator=gen, dtype=torch.float64)
    _, ang = nearest(rots, level)
    step = math.radians(angular_step(level))
    assert ang.max() < 0.9 * step
    assert 0.4 * step < ang.mean() < 0.55 * step


@pytest.mark.parametrize("level", [0, 1, 2])
def test_nearest_fine_point_descends_from_a_near_coarse_point(level):
    """Branch-and-bound needs this: for each of 2,000 random rotations, the nearest level-(L+1) grid
    point is a child of one of its 6 nearest level-L points (measured: top-1 ~81–87%, top-4 ≥ 99.7%)."""
    gen = torch.Generator().manual_seed(5)
    rots = random_rotations(2000, generator=gen, dtype=torch.float64)
    fine, _ = nearest(rots, level + 1, k=1)
    coarse, _ = nearest(rots, level, k=6)
    hit = coarse == parent(level + 1, fine[:, 0])[:, None]
    assert hit.any(1).all()
    assert hit[:, 0].float().mean() > 0.75


def test_nearest_matches_exhaustive_geodesic_search(device):
    """nearest() (trace matrix product, chunked) = argsort of the geodesic distance to every grid point."""
    gen = torch.Generator().manual_seed(2)
    rots = random_rotations(50, generator=gen, dtype=torch.float64).to(device)
    idx, ang = nearest(rots, 1, k=3, chunk=1000)  # small chunks: exercises the running top-k merge
    d = geodesic_distance(rots[:, None], so3_grid(1, device=device, dtype=torch.float64)[None])
    ref_ang, ref_idx = d.sort(dim=1)
    torch.testing.assert_close(ang, ref_ang[:, :3])
    assert torch.equal(idx, ref_idx[:, :3])


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("max_deg", [0.0, 3.0, 12.0, 35.0, 100.0, 180.0])
def test_local_grid_equals_brute_force(level, max_deg, device):
    """local_grid (direction pre-filter + closed-form in-plane range) returns exactly the grid points
    whose geodesic distance to each rotation is ≤ max_angle, without duplicates, sorted."""
    gen = torch.Generator().manual_seed(7)
    rots = random_rotations(40, generator=gen, dtype=torch.float64).to(device)
    max_angle = math.radians(max_deg)
    b, i = local_grid(rots, level, max_angle)
    assert b.device.type == device.type
    d = geodesic_distance(rots[:, None], so3_grid(level, device=device, dtype=torch.float64)[None])
    got = torch.zeros_like(d, dtype=torch.bool)
    got[b, i] = True
    assert len(b) == int(got.sum())  # no duplicates
    key = b * grid_size(level) + i
    assert torch.all(key[1:] > key[:-1])
    boundary = (d - max_angle).abs() < 1e-9
    assert not ((got != (d <= max_angle)) & ~boundary).any()
    if max_deg == 180.0:
        assert len(b) == 40 * grid_size(level)


def test_local_grid_around_grid_points_finds_children_and_self():
    """A local search around a level-L point at level L+1 with radius angular_step(L) contains all
    8 of its children (they lie within the step, see above); around a level-L point at level L with a
    tiny radius it finds exactly that point."""
    level = 2
    idx = torch.tensor([0, 100, 2000, grid_size(level) - 1])
    r = so3_grid(level, dtype=torch.float64, indices=idx)
    b, i = local_grid(r, level + 1, math.radians(angular_step(level)))
    for row, ch in enumerate(children(level, idx)):
        assert set(ch.tolist()) <= set(i[b == row].tolist())
    b, i = local_grid(r, level, 1e-6)
    assert torch.equal(b, torch.arange(4)) and torch.equal(i, idx)

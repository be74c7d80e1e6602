"""3DFlex's deformation model (volumes/deformation.py, imaging/convect.py) against independent
computations: integer rolls and Fourier phase shifts for a translation flow, scipy's affine resampling and
closed-form Gaussians for a rotation flow, a dot-product test of the explicit adjoint (and autograd's VJP
against it), and the rigidity / smoothness terms on rigid, scaled and random motions of the mesh."""

import numpy as np
import torch
from scipy import ndimage

from cryolens.imaging import gaussian_volume, random_rotations
from cryolens.imaging.convect import convect, convect_adjoint, project_convected, voxel_points
from cryolens.imaging.project import project_real
from cryolens.volumes.deformation import (DeformedVolume, rigidity, smoothness, tetra_jacobians,
                                          vertex_positions)
from cryolens.volumes.protocol import RealSpaceProjector, VolumeModel

D = 16
CENTERS = torch.tensor([[-2.0, 1.0, 0.5], [2.5, -1.5, -1.0], [0.0, 2.0, -2.5]], dtype=torch.float64)


def smooth_map(sigma: float = 2.2) -> torch.Tensor:
    return gaussian_volume(CENTERS, torch.full((3,), sigma, dtype=torch.float64),
                           torch.tensor([1.0, 0.7, 0.9], dtype=torch.float64), D)


def constant_flow(vector, cells: int = 4) -> torch.Tensor:
    k = cells + 1
    return torch.tensor(vector, dtype=torch.float64)[None, :, None, None, None].expand(1, 3, k, k, k).clone()


def affine_flow(matrix: torch.Tensor, offset: torch.Tensor, cells: int = 4) -> torch.Tensor:
    """The flow with ``x − u(x) = M x + t`` at every vertex (so exactly everywhere: trilinear is exact)."""
    rest = vertex_positions(cells, D, dtype=torch.float64)
    mapped = torch.einsum("ij,jzyx->izyx", matrix, rest) + offset[:, None, None, None]
    return (rest - mapped)[None]


def shifted(volume: np.ndarray, shifts) -> np.ndarray:
    """``volume`` moved by whole voxels ``shifts`` along its axes, zeros entering (np.roll, then the
    wrapped slabs cleared)."""
    out = np.roll(volume, shift=shifts, axis=(0, 1, 2))
    for axis, s in enumerate(shifts):
        index = [slice(None)] * 3
        index[axis] = slice(0, s) if s > 0 else slice(volume.shape[axis] + s, None)
        out[tuple(index)] = 0.0
    return out


def render(volume: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    return convect(volume, flow, voxel_points(D, 1, dtype=volume.dtype))[0].reshape(D, D, D)


def test_translation_flow_is_the_shifted_map():
    """u ≡ t: V(x) = V0(x − t). Integer t: exactly np.roll (zeros enter, the map is compact); a
    half-pixel t: the Fourier phase-shifted map, within trilinear interpolation error."""
    v0 = smooth_map(1.6)
    out = render(v0, constant_flow([2.0, -1.0, 3.0]))
    rolled = shifted(v0.numpy(), (3, -1, 2))  # axes [z, y, x] ← t = (x, y, z)
    np.testing.assert_allclose(out.numpy(), rolled, atol=1e-12)
    v0 = smooth_map(2.4)
    t = np.array([0.5, -0.5, 1.5])
    out = render(v0, constant_flow(list(t)))
    k = np.fft.fftfreq(D)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    ramp = np.exp(-2j * np.pi * (kx * t[0] + ky * t[1] + kz * t[2]))
    moved = np.fft.ifftn(np.fft.fftn(v0.numpy()) * ramp).real
    err = np.abs(out.numpy() - moved).max() / np.abs(moved).max()
    assert err < 0.06, err  # trilinear interpolation error at half-pixel offsets of a σ = 2.4 px map
    assert np.abs(render(v0, constant_flow([0.0, 0.0, 0.0])).numpy() - moved).max() / np.abs(moved).max() > 0.2


def test_rotation_flow_is_the_rotated_map():
    """x − u(x) = Rᵀ x: V(x) = V0(Rᵀ x), i.e. V0 rotated by R about the centre. Checked against scipy's
    affine_transform (order 1, index space [z, y, x]) and against the mixture with rotated centres."""
    r = random_rotations(1, generator=torch.Generator().manual_seed(3))[0].double()
    v0 = smooth_map()
    out = render(v0, affine_flow(r.T, torch.zeros(3, dtype=torch.float64))).numpy()
    perm = np.eye(3)[::-1]  # (x, y, z) ↔ [z, y, x]
    m = perm @ r.T.numpy() @ perm
    c = np.full(3, D // 2)
    ref = ndimage.affine_transform(v0.numpy(), m, offset=c - m @ c, order=1, mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(out, ref, atol=1e-9)
    exact = gaussian_volume(CENTERS @ r.T, torch.full((3,), 2.2, dtype=torch.float64),
                            torch.tensor([1.0, 0.7, 0.9], dtype=torch.float64), D).numpy()
    assert np.abs(out - exact).max() < 0.06 * exact.max()  # trilinear interpolation error
    assert np.abs(v0.numpy() - exact).max() > 0.3 * exact.max()  # the rotation is not negligible


def test_adjoint_passes_the_dot_product_test_and_equals_autograd():
    """⟨A x, y⟩ = ⟨x, Aᵀ y⟩ for the explicit splat Aᵀ (float64, random map, values and a random flow of a
    few px, points partly outside the box); autograd's VJP of A is the same operator."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(D, D, D, generator=g, dtype=torch.float64)
    flow = 2.5 * torch.randn(2, 3, 5, 5, 5, generator=g, dtype=torch.float64)
    pts = (torch.rand(2, 700, 3, generator=g, dtype=torch.float64) - 0.5) * (D + 4)
    y = torch.randn(2, 700, generator=g, dtype=torch.float64)
    at_y = convect_adjoint(y, flow, pts, D)
    lhs = float((convect(x, flow, pts) * y).sum())
    rhs = float((x * at_y).sum())
    assert abs(lhs - rhs) < 1e-10 * max(abs(lhs), 1.0)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(convect(xr, flow, pts), xr, y)
    np.testing.assert_allclose(grad.numpy(), at_y.numpy(), atol=1e-10)


def test_rigidity_zero_for_rigid_motion_positive_otherwise():
    """Rotation + translation of the mesh: 0 (to rounding); uniform scaling by s: the closed form
    3 (s² − 1)²; a random perturbation of one vertex: > 0. Smoothness: 0 for any affine flow, > 0 after
    the perturbation. Jacobians of an affine motion equal its matrix on every tetrahedron."""
    r = random_rotations(1, generator=torch.Generator().manual_seed(1))[0].double()
    rigid = affine_flow(r, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    assert float(rigidity(rigid, D)[0]) < 1e-12
    s = 1.1
    scaled = affine_flow(s * torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert abs(float(rigidity(scaled, D)[0]) - 3 * (s * s - 1) ** 2) < 1e-12
    shear = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    rest = vertex_positions(4, D, dtype=torch.float64)
    jac = tetra_jacobians(rest - affine_flow(shear, torch.zeros(3, dtype=torch.float64))[0][None], D / 4)
    np.testing.assert_allclose(jac.numpy(), np.broadcast_to(shear.numpy(), jac.shape), atol=1e-12)
    bumped = rigid.clone()
    bumped[0, :, 2, 2, 2] += torch.tensor([0.4, -0.2, 0.3], dtype=torch.float64)
    assert float(rigidity(bumped, D)[0]) > 1e-4
    w = torch.zeros(4, 4, 4, dtype=torch.float64)
    w[0, 0, 0] = 1.0  # a cell far from the bumped vertex: no weight where it deforms
    assert float(rigidity(bumped, D, w)[0]) < 1e-12
    assert float(smoothness(rigid)[0]) < 1e-20 and float(smoothness(scaled)[0]) < 1e-20
    assert float(smoothness(bumped)[0]) > 1e-3


def test_rigidity_equals_the_jacobian_form_in_value_and_gradient():
    """rigidity (from the cube edges, no 3 × 3 products) equals the weighted mean over all Kuhn tetrahedra of
    ‖FᵀF − I‖²_F with F from tetra_jacobians, and so does its gradient in the flow: random flows of a few px
    (large strains) and random cell weights, meshes of 1, 3 and 5 cells, float64."""
    g = torch.Generator().manual_seed(4)
    for n in (1, 3, 5):
        flow = (2.0 * torch.randn(2, 3, n + 1, n + 1, n + 1, generator=g, dtype=torch.float64)).requires_grad_(True)
        w = torch.rand(n, n, n, generator=g, dtype=torch.float64)
        jac = tetra_jacobians(vertex_positions(n, D, dtype=torch.float64) - flow, D / n)
        strain = (jac.transpose(-1, -2) @ jac - torch.eye(3, dtype=torch.float64)).square().sum((-1, -2))
        ref = (strain * w).mean((1, 2, 3, 4))
        (ref_grad,) = torch.autograd.grad(ref.sum(), flow)
        out = rigidity(flow, D, w)
        (grad,) = torch.autograd.grad(out.sum(), flow)
        np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-10, atol=1e-14)
        assert float(ref.detach().min()) > 0.01  # far from rigid (0 for a rigid motion): every term matters


def test_deformed_volume_protocol_and_projection():
    """DeformedVolume is a VolumeModel and RealSpaceProjector; at zero flow its
    projection is project_real of V0 and its render is V0; its projection of a translation flow equals
    project_real of the shifted map (integer shift, a map inside a ball of 4 px: exact); Fourier values
    are those of the rendered map."""
    v0 = smooth_map(1.2).float() * (voxel_points(D)[0].norm(dim=-1) < 4).reshape(D, D, D)
    model = DeformedVolume(D, 2, 4, layers=2, hidden=8, volume=v0)
    torch.nn.init.zeros_(model.generator.out.weight)  # zero flow for every z
    assert isinstance(model, VolumeModel) and isinstance(model, RealSpaceProjector)
    rots = random_rotations(3, generator=torch.Generator().manual_seed(2))
    z = torch.randn(3, 2)
    np.testing.assert_allclose(model.project(rots, z).detach().numpy(), project_real(v0, rots).numpy(), atol=1e-5)
    np.testing.assert_allclose(model.render(z)[1].detach().numpy(), v0.numpy(), atol=1e-6)
    flow = constant_flow([1.0, 2.0, -1.0]).float().expand(3, -1, -1, -1, -1)
    rolled = torch.as_tensor(shifted(v0.numpy(), (-1, 2, 1)))
    np.testing.assert_allclose(project_convected(v0, flow, rots).numpy(), project_real(rolled, rots).numpy(),
                               atol=1e-4)
    coords = torch.rand(3, 20, 3) - 0.5
    from cryolens.volumes.voxel import RealVoxelVolume
    ref = RealVoxelVolume(D, v0).fourier(coords)
    np.testing.assert_allclose(model.fourier(coords, z).detach().numpy(), ref.detach().numpy(), atol=1e-3)

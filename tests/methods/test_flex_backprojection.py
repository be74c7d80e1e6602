"""3DFlex's flexible reconstruction start (issue 23): :func:`unconvect` inverts the convection (a translation
against the analytically shifted Gaussian; a rotation field round trip); the flexible back-projection with zero
flows is the half's back-projection (``backproject``, an independent code path), and with the flows that
generated the data (two states a translation apart) it is closer to the canonical map than the consensus."""

import math

import numpy as np
import torch
from torch import nn

from cryolens.imaging import CTFParams, gaussian_volume, random_rotations, render_images
from cryolens.imaging.convect import convect, unconvect, voxel_points
from cryolens.inference.flex import FlexModel
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles, half_set_labels
from cryolens.methods.backprojection import backproject
from cryolens.inference.flex import flexible_backprojection
from cryolens.volumes.deformation import vertex_positions

D, PX = 16, 3.0
CENTRES = torch.tensor([[2.0, -1.0, 1.5], [-3.0, 2.0, -1.0], [0.5, 3.0, -3.0]])


def blobs(shift: float = 0.0) -> torch.Tensor:
    return gaussian_volume(CENTRES + torch.tensor([shift, 0.0, 0.0]), torch.full((3,), 1.6), torch.ones(3), D)


def translation(t: float, cells: int = 4) -> torch.Tensor:
    flow = torch.zeros(1, 3, cells + 1, cells + 1, cells + 1)
    flow[:, 0] = t
    return flow


def test_unconvect_undoes_a_translation_and_a_rotation():
    moved = blobs(2.0)  # V(x) = V0(x − u) with u = +2 px along x (whole voxels: exact trilinear samples)
    back = unconvect(moved, translation(2.0))
    inside = (slice(None), slice(None), slice(0, D - 2))  # x + 2 px still inside the box
    assert (back - blobs())[inside].norm() < 1e-4 * blobs().norm()
    c, s = math.cos(0.25), math.sin(0.25)  # a 14° turn about z, as a flow on a 4-cell mesh
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    verts = vertex_positions(4, D)
    flow = (verts - torch.einsum("ij,jzyx->izyx", rot.T, verts))[None]  # u(x) = x − Rᵀx: V(x) = V0(Rᵀx)
    v0 = blobs()
    turned = convect(v0, flow, voxel_points(D)).reshape(D, D, D)
    err = (unconvect(turned, flow) - v0).norm()  # two trilinear resamplings blur it by a few %
    assert err < 0.1 * v0.norm() and err < 0.3 * (turned - v0).norm()
    assert err < 0.7 * (unconvect(turned, flow, iterations=1) - v0).norm()  # the fixed point beats x = y + u(y)


class Translate(nn.Module):
    """A stand-in generator: ``z (B, 1)`` → a translation of ``2·z`` px along x."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flow = torch.zeros(z.shape[0], 3, 5, 5, 5)
        flow[:, 0] = 2.0 * z[:, :1, None, None]
        return flow


def two_states(tmp_path, n: int = 240):
    g = torch.Generator().manual_seed(3)
    rots = random_rotations(n, generator=g)
    du = 8000 + 8000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(du, du - 300, torch.rand(n, generator=g) * 3, 300, 2.7, 0.1)
    state = torch.arange(n) % 2 * 2 - 1  # ±1
    images = torch.empty(n, D, D)
    for s in (-1, 1):
        m = state == s
        images[m] = render_images(blobs(2.0 * s), rots[m], None, ctf[m], PX)
    write_stack(tmp_path / "s.mrcs", images.numpy(), PX)
    parts = Particles(PX, D, [str(tmp_path / "s.mrcs")], np.zeros(n, int), np.arange(n), rots, None, ctf)
    model = FlexModel(D, PX, n, 1, 4, 2, 8, torch.zeros(D, D, D), 0.5, 1.0, 10.0, 1.0)
    model.table.mu.copy_(state[:, None].float())
    return parts, model


def test_flexible_backprojection_is_the_back_projection_at_zero_flow_and_undoes_known_flows(tmp_path):
    parts, model = two_states(tmp_path)
    half = np.nonzero(half_set_labels(parts, 0) == 0)[0]
    bp = backproject(parts, progress=False)
    model.volume.generator.out.weight.data.zero_()
    model.volume.generator.out.bias.data.zero_()
    zero = flexible_backprojection(model, parts, half, groups=2)
    assert (zero - bp.half1).norm() < 1e-4 * bp.half1.norm()
    model.volume.generator = Translate()
    flex = flexible_backprojection(model, parts, half, groups=2)
    truth = blobs()
    cc = [float(torch.nn.functional.cosine_similarity(v.flatten(), truth.flatten(), 0)) for v in (flex, bp.half1)]
    assert 1 - cc[0] < 0.2 * (1 - cc[1]), cc  # 0.995 against 0.915

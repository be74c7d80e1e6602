"""The rigid-group decoder of a Gaussian mixture (cryofold ``motion=chains``): starts at the base model, moves
each group as the hand-computed rigid motion, keeps the local move out of the rigid placement, and learns a
half turn that a bounded per-residue decoder cannot represent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryolens.errors import InputError
from cryolens.methods.cryofold import CryoFoldConfig, atomic_mixture
from cryolens.volumes.mixture_decoder import RigidGroupDecoder, skew


def _base() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 3, generator=g) * 12
    base[4:] += torch.tensor([40.0, 0.0, 0.0])
    return base, torch.tensor([0, 0, 0, 0, 1, 1, 1])


def _set(dec: RigidGroupDecoder, group: int, omega, t_raw) -> None:
    """Make the decoder output axis-angle ``omega`` and raw translation ``t_raw`` for ``group``, whatever z."""
    with torch.no_grad():
        dec.rigid.bias[6 * group:6 * group + 3] = torch.as_tensor(omega, dtype=torch.float32)
        dec.rigid.bias[6 * group + 3:6 * group + 6] = torch.as_tensor(t_raw, dtype=torch.float32)


def test_starts_at_the_base_and_moves_groups_as_the_hand_computed_rigid_motion():
    base, groups = _base()
    dec = RigidGroupDecoder(2, base, groups, layers=1, hidden=8, translation_scale=10.0)
    z = torch.randn(3, 2)
    d, amps = dec(z)
    assert amps is None and float(d.detach().abs().max()) < 1e-5  # float32 round-off of (c − o) + o
    _set(dec, 1, [0.0, 0.0, math.pi], [0.5, 0.0, 0.0])  # half turn about z through group 1's centroid, + x
    d = dec(z)[0]
    b = base.double().numpy()
    o = b[4:].mean(0)
    want = b.copy()
    want[4:] = (b[4:] - o) * np.array([-1.0, -1.0, 1.0]) + o + np.array([10 * math.tanh(0.5), 0.0, 0.0])
    for k in range(3):
        np.testing.assert_allclose((base + d[k]).detach().double().numpy(), want, atol=1e-4)


def test_skew_is_the_cross_product_and_local_moves_stay_out_of_the_rigid_placement():
    v, x = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum("bij,bj->bi", skew(v), x), torch.linalg.cross(v, x))
    base, groups = _base()
    dec = RigidGroupDecoder(2, base, groups, layers=1, hidden=8, shift_scale=3.0)
    with torch.no_grad():
        dec.local.bias.fill_(0.2)
    _set(dec, 0, [0.3, -0.2, 0.1], [0.1, 0.2, -0.3])
    z = torch.randn(2, 2)
    rigid = dec.rigid_centers(z)
    local = (base + dec(z)[0] - rigid).detach().numpy()
    np.testing.assert_allclose(local, np.full((2, 7, 3), 3 * math.tanh(0.2)), atol=1e-5)
    d = torch.cdist(rigid[0, :4].double(), rigid[0, :4].double())  # a rigid motion keeps distances
    torch.testing.assert_close(d, torch.cdist(base[:4].double(), base[:4].double()), atol=1e-4, rtol=0)


def test_learns_a_half_turn_by_gradient_descent():
    """Fitting z → positions where group 1 is turned by angle(z) ∈ [0, π] about the x axis: the rigid decoder
    reaches it (RMSD < 1 Å), a per-centre move bounded by 20 Å cannot (group 1's centres move up to > 20 Å)."""
    torch.manual_seed(0)
    base, groups = _base()
    dec = RigidGroupDecoder(1, base, groups, layers=2, hidden=32)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    o = base[4:].mean(0)
    z = torch.linspace(0, 1, 16)[:, None]

    def target(zz):
        a = math.pi * zz[:, 0]
        c, s = torch.cos(a), torch.sin(a)
        rot = torch.zeros(len(zz), 3, 3)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, -s, s, c
        out = base[None].repeat(len(zz), 1, 1)
        out[:, 4:] = torch.einsum("bij,nj->bni", rot, base[4:] - o) + o
        return out

    goal = target(z)
    for _ in range(1500):
        opt.zero_grad()
        loss = (base + dec(z)[0] - goal).square().sum(-1).mean()
        loss.backward()
        opt.step()
    assert loss.item() ** 0.5 < 1.0
    assert float((goal - base).norm(dim=-1).max()) > 20.0  # beyond a 20 Å per-centre bound


def test_cryofold_motion_option_is_checked(tmp_path):
    from cryolens.io.particles import Particles
    p = Particles(2.0, 16, [], np.zeros(0), np.zeros(0))
    model = tmp_path / "m.pdb"
    model.write_text("ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\n"
                     "ATOM      2  CA  ALA B   2       3.800   0.000   0.000  1.00  0.00           C\nEND\n")
    with pytest.raises(InputError, match="motion"):
        atomic_mixture(p, CryoFoldConfig(model=str(model), motion="domains"), "cpu")
    vol, _ = atomic_mixture(p, CryoFoldConfig(model=str(model), motion="chains", zdim=2), "cpu")
    assert isinstance(vol.decoder, RigidGroupDecoder) and vol.decoder.origins.shape == (2, 3)

"""Encoders and the latent table: the MLP encoder reads only the lattice pixels (inside the Nyquist
circle), the CNN encoder maps images to (μ, logvar) with gradients, the autodecoder table returns its
own rows."""

import torch

from cryolens.inference.encoders import CNNEncoder, LatentTable, MLPEncoder
from cryolens.volumes import SliceLattice


def test_mlp_encoder_sees_only_the_lattice():
    """Changing a corner pixel (beyond Nyquist) leaves (μ, logvar) unchanged; changing a lattice pixel
    changes them."""
    lat = SliceLattice(16)
    enc = MLPEncoder(lat, 3, layers=1, hidden=16)
    x = torch.randn(2, 16, 16)
    mu, lv = enc(x)
    corner = x.clone()
    corner[:, 0, 0] += 5.0  # frequency (−½, −½): outside the disc
    torch.testing.assert_close(enc(corner)[0], mu)
    inside = x.clone()
    inside[:, 8, 9] += 5.0  # frequency (1/16, 0)
    assert not torch.allclose(enc(inside)[0], mu)
    assert mu.shape == lv.shape == (2, 3)


def test_cnn_encoder_shapes_and_gradients():
    """(B, D, D) Hartley images → μ, logvar of (B, zdim), differentiable in the weights."""
    enc = CNNEncoder(32, 4, channels=8, hidden=32)
    mu, lv = enc(torch.randn(3, 32, 32))
    assert mu.shape == lv.shape == (3, 4)
    (mu.sum() + lv.sum()).backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_latent_table_rows():
    """index → the table's own rows; the variational table also returns per-image log-variances."""
    t = LatentTable(10, 2, variational=True, init_logvar=-3.0)
    mu, lv = t(torch.tensor([4, 1]))
    torch.testing.assert_close(mu, t.mu[[4, 1]])
    torch.testing.assert_close(lv, torch.full((2, 2), -3.0))
    assert LatentTable(5, 2)(torch.tensor([0]))[1] is None

"""The implicit neural volume: Hartley ↔ Fourier conversions against numpy, the Friedel half-lattice
against full evaluation, the encodings' frequencies, and a tiny field fitted to a Gaussian blob's
analytic slices rendering the blob."""

import math

import numpy as np
import torch

from cryolens.imaging import gaussian_projection_ft, gaussian_volume, hartley2, hartley3, random_rotations
from cryolens.metrics.fsc import fsc
from cryolens.volumes import (NeuralField, PositionalEncoding, SliceLattice, VoxelVolume, flip_frequencies,
                              fourier_to_hartley, hartley_to_fourier)


def _np_centered_fft(x, axes):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes), axes=axes)


def test_hartley_fourier_conversions_match_numpy():
    """hartley2/3 equal numpy's Re − Im of the centered FFT; hartley_to_fourier recovers numpy's FFT
    from the Hartley transform alone (2D and 3D, float64)."""
    rng = np.random.default_rng(0)
    img, vol = rng.standard_normal((3, 12, 12)), rng.standard_normal((10, 10, 10))
    f2, f3 = _np_centered_fft(img, (-2, -1)), _np_centered_fft(vol, (-3, -2, -1))
    h2, h3 = hartley2(torch.from_numpy(img)), hartley3(torch.from_numpy(vol))
    np.testing.assert_allclose(h2.numpy(), f2.real - f2.imag, atol=1e-10)
    np.testing.assert_allclose(h3.numpy(), f3.real - f3.imag, atol=1e-10)
    np.testing.assert_allclose(hartley_to_fourier(h2).numpy(), f2, atol=1e-10)
    np.testing.assert_allclose(hartley_to_fourier(h3, (-3, -2, -1)).numpy(), f3, atol=1e-10)
    np.testing.assert_allclose(fourier_to_hartley(torch.from_numpy(f2)).numpy(), h2.numpy(), atol=1e-10)


def test_flip_frequencies_is_negation_of_the_frequency_index():
    """flip_frequencies maps centered index i to the index of frequency −(i − D/2)/D, modulo D."""
    d = 8
    x = torch.arange(d, dtype=torch.float64)
    freq = (x - d // 2) / d
    flipped = flip_frequencies(freq, (0,))
    expect = [(-(i - d // 2) / d + 0.5) % 1 - 0.5 for i in range(d)]  # −f wrapped into [−½, ½)
    np.testing.assert_allclose(flipped.numpy(), expect)


def test_slice_lattice_is_the_nyquist_disc_in_friedel_pairs():
    """The lattice holds exactly the pixels with |f|·D < D/2 (numpy count); the partner block is the
    negation of the half block, and the origin comes first."""
    d = 16
    lat = SliceLattice(d)
    k = (np.arange(d) - d // 2)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    assert len(lat) == int((np.hypot(kx, ky) < d / 2).sum())
    h = lat.n_half
    f = lat.freqs
    assert torch.equal(f[0], torch.zeros(3))
    torch.testing.assert_close(f[1 + h:], -f[1:1 + h])
    assert len(lat) == 1 + 2 * h


def test_fourier_field_evaluates_half_the_lattice_and_equals_full_evaluation():
    """Fourier domain: slices() runs the MLP on 1 + n_half points per image (counted with a hook) and
    gives the same Hartley values as querying every lattice point through forward(); the field obeys
    F(−k) = conj F(k) at random points."""
    torch.manual_seed(0)
    field = NeuralField(16, zdim=3, layers=2, hidden=32)
    lat = SliceLattice(16)
    rots, z = random_rotations(4), torch.randn(4, 3)
    rows = []
    hook = field.mlp.blocks[0].register_forward_hook(lambda m, i, o: rows.append(i[0].shape[-2]))
    half = field.slices(rots, z, lat)
    hook.remove()
    assert rows == [1 + lat.n_half]
    full = field(lat.points(rots, half=False), z)
    torch.testing.assert_close(half, full, rtol=0, atol=1e-6)
    k = torch.rand(4, 50, 3) - 0.5
    torch.testing.assert_close(field.fourier(-k, z), field.fourier(k, z).conj())


def test_geometric_encoding_spans_one_cycle_to_nyquist():
    """Geometric wavenumbers run from 1 cycle per box to D/2 (Nyquist: sign alternation between
    neighbouring lattice points); Gaussian features have std feat_sigma · D/2."""
    d = 32
    enc = PositionalEncoding(d, "geometric")
    w = enc.freqs[0, : enc.n] / (2 * math.pi)
    assert abs(float(w[0]) - 1.0) < 1e-5 and abs(float(w[-1]) - d / 2) < 1e-3
    k = torch.tensor([[1 / d, 0.0, 0.0], [2 / d, 0.0, 0.0]])
    c = enc(k)[:, enc.n * 3 + enc.n - 1]  # cos of the top x wavenumber
    assert float(c[0]) < -0.999 and float(c[1]) > 0.999
    g = PositionalEncoding(256, "gaussian", n=2000, feat_sigma=0.5)
    assert abs(float(g.freqs.std()) - 0.5 * 128) < 3


def test_voxel_volume_slices_match_the_analytic_gaussian():
    """A VoxelVolume made from a Gaussian map returns, at grid-aligned slice points, the analytic
    Hartley transform of its projection (closed form of the Gaussian)."""
    d = 16
    c, s, a = torch.tensor([[1.0, -1.0, 0.5]]), torch.tensor([2.0]), torch.tensor([1.0])
    vox = VoxelVolume(d, gaussian_volume(c, s, a, d))
    lat = SliceLattice(d)
    rot = torch.eye(3)[None]
    ref = gaussian_projection_ft(c, s, a, rot, d).flatten(-2)[:, lat.pixels]
    got = vox(lat.points(rot, half=False))
    torch.testing.assert_close(got, fourier_to_hartley(ref).float(), atol=2e-3 * float(ref.abs().max()), rtol=0)


def test_tiny_field_fitted_to_blob_slices_renders_the_blob():
    """A 2 × 64 field trained on the analytic Hartley slices of a Gaussian blob (closed-form transform of
    its projections at random poses) renders a map whose FSC against the voxelised blob is ≥ 0.95 over
    shells 0–3 and ≥ 0.8 at shell 4 (half Nyquist)."""
    torch.manual_seed(0)
    d = 16
    c = torch.tensor([[2.0, -1.0, 1.0], [-2.0, 1.5, -1.0]])
    s, a = torch.tensor([1.6, 2.0]), torch.tensor([1.0, 0.7])
    truth = gaussian_volume(c, s, a, d)
    field = NeuralField(d, zdim=0, layers=2, hidden=64, pe="geometric")
    lat = SliceLattice(d)
    scale = float(gaussian_projection_ft(c, s, a, torch.eye(3)[None], d).abs().max())
    field.output_scale.fill_(scale)
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    for _ in range(250):
        rots = random_rotations(8)
        target = fourier_to_hartley(gaussian_projection_ft(c, s, a, rots, d)).flatten(-2)[:, lat.pixels] / scale
        loss = (field.slices(rots, None, lat) - target.float()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    curve = np.asarray(fsc(field.render()[0], truth))
    assert curve[:4].min() > 0.95 and curve[4] > 0.8, curve


def test_first_layer_with_a_shared_vector_equals_the_linear_layer_on_the_concatenation():
    """ResidualMLP.first_layer(x, c) — c multiplied once per item — equals nn.Linear on [x, c repeated on
    every row] (the concatenated form it replaces), in value and in the gradients of the weight, the bias,
    c and x, float64; the whole MLP with ``cond`` equals the MLP on the concatenation."""
    from cryolens.volumes.mlp import ResidualMLP

    torch.manual_seed(0)
    mlp = ResidualMLP(7 + 3, 2, 16, 2).double()
    x = torch.randn(4, 9, 7, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 9, 16, dtype=torch.float64)

    def grads(pre):
        mlp.zero_grad()
        x.grad = c.grad = None
        (pre * upstream).sum().backward()
        return [t.grad.clone() for t in (mlp.inp.weight, mlp.inp.bias, c, x)]

    concat = torch.cat([x, c[:, None, :].expand(-1, 9, -1)], dim=-1)
    reference = torch.nn.functional.linear(concat, mlp.inp.weight, mlp.inp.bias)
    split = mlp.first_layer(x, c)
    torch.testing.assert_close(split, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(mlp.first_layer(x, c)), grads(reference)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mlp(x, c), mlp(concat), rtol=1e-12, atol=1e-12)

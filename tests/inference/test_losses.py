"""Loss terms: the closed-form KL against float64 Monte-Carlo and torch.distributions, the
reparametrised sample's moments, and the Hartley-lattice likelihood against the Fourier-space
squared error of the forward model (shift and CTF conventions included)."""

import numpy as np
import torch

from cryolens.imaging import (CTFParams, ctf_2d, fft2_centered, gaussian_volume, phase_shift, random_rotations,
                              render_images)
from cryolens.inference.losses import (centered_hartley, ctf_on_lattice, image_mse, kl_standard_normal,
                                       reparametrize)
from cryolens.volumes import SliceLattice, VoxelVolume


def test_kl_equals_closed_form_and_monte_carlo():
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over dims equals torch.distributions' KL and a float64 numpy
    Monte-Carlo estimate E_q[log q − log p] (200k samples, within 4 standard errors)."""
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    kl = kl_standard_normal(mu, logvar)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl, ref)
    rng = np.random.default_rng(0)
    m, s = mu.double().numpy(), np.exp(0.5 * logvar.double().numpy())
    x = m + s * rng.standard_normal((200_000, 3, 4))
    log_q = -0.5 * ((x - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    log_p = -0.5 * x**2 - 0.5 * np.log(2 * np.pi)
    d = (log_q - log_p).sum(-1)
    est, se = d.mean(0), d.std(0) / np.sqrt(d.shape[0])
    assert np.all(np.abs(est - kl.double().numpy()) < 4 * se + 1e-9), (est, kl)


def test_reparametrized_samples_have_the_posterior_moments():
    """z = μ + e^{logvar/2}·ε has mean μ and variance e^{logvar} (100k samples), and carries gradients."""
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.5, -1.0]], requires_grad=True)
    z = reparametrize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    assert torch.allclose(z.mean(0), mu[0], atol=0.02)
    assert torch.allclose(z.var(0), logvar[0].exp(), rtol=0.02)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


def test_hartley_lattice_mse_equals_fourier_squared_error():
    """Σ over the lattice of (Y_H − C·H)² equals Σ |X̃·conj(ramp) − C·P|² over the same pixels,
    computed in complex float64 from the Fourier values (cross terms cancel between ±k)."""
    d = 16
    g = torch.Generator().manual_seed(2)
    images = torch.randn(3, d, d, generator=g, dtype=torch.float64)
    model_img = torch.randn(3, d, d, generator=g, dtype=torch.float64)
    shifts = torch.randn(3, 2, generator=g, dtype=torch.float64)
    params = CTFParams.create([9000.0, 12000.0, 15000.0], [8800.0, 11500.0, 15000.0], [0.3, 1.0, 2.0])
    lat = SliceLattice(d)
    px = 2.5
    pm = fft2_centered(model_img)
    h_model = (pm.real - pm.imag).flatten(-2)[:, lat.pixels]
    pred = ctf_on_lattice(params, lat, px).double() * h_model
    target = centered_hartley(images, shifts).double()
    got = image_mse(pred, lat.gather(target)) * len(lat)
    c = ctf_2d(params, d, px, dtype=torch.float64)
    resid = phase_shift(fft2_centered(images), -shifts) - c * pm
    ref = resid.abs().square().flatten(-2)[:, lat.pixels].sum(-1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)


def test_forward_model_images_are_explained_by_the_true_volume():
    """Images rendered by imaging.render_images (shift, CTF) are reproduced on the lattice by the
    true volume's slices times the CTF (relative error < 5 %: trilinear interpolation of the unpadded
    grid); with the shifts negated they are not (the shift sign is sharp)."""
    d, px = 16, 3.0
    vol = gaussian_volume(torch.tensor([[2.0, -1.0, 1.0], [-2.0, 2.0, 0.0]]), torch.tensor([1.5, 2.0]),
                          torch.tensor([1.0, 0.6]), d)
    g = torch.Generator().manual_seed(3)
    rots = random_rotations(8, generator=g)
    shifts = (torch.rand(8, 2, generator=g) - 0.5) * 4
    params = CTFParams.create(10000 + 5000 * torch.rand(8, generator=g))
    images = render_images(vol, rots, shifts, params, px, pad=2)
    lat = SliceLattice(d)
    vox = VoxelVolume(d, vol)
    with torch.no_grad():
        pred = vox(lat.points(rots, half=False)) * ctf_on_lattice(params, lat, px)
    target = lat.gather(centered_hartley(images, shifts))
    rel = float(image_mse(pred, target).sum() / target.square().mean(-1).sum())
    assert rel < 0.05, rel
    wrong = lat.gather(centered_hartley(images, -shifts))
    assert float(image_mse(pred, wrong).sum() / wrong.square().mean(-1).sum()) > 10 * rel

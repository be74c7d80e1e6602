"""CryoVAEGAN's parts: the latent read-outs (circular correlation, spectral angle, defocus component) against
closed-form cases, and the VAE-GAN's loss terms against a hand computation."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cryolens.inference.losses import kl_standard_normal
from cryolens.inference.vaegan import VAEGAN, circular_correlation, latent_readout
from cryolens.methods import get


def test_circular_correlation_is_offset_and_direction_free_and_matches_the_pairwise_formula():
    """|ρ_T| = 1 for b = −a + 1.3 and for b = a − 2; ≈ 0 for independent angles; equal to Fisher and Lee's
    pairwise form Σ_{i<j} sin(a_i − a_j) sin(b_i − b_j) / sqrt(Σ sin²(a_i − a_j) · Σ sin²(b_i − b_j)) (an
    independent computation) on a 7-angle example; near 1 for uniform angles read with a smooth warp
    (b = a + 0.3 sin 2a)."""
    g = np.random.default_rng(0)
    a = g.uniform(-np.pi, np.pi, 500)
    assert circular_correlation(a, -a + 1.3) == pytest.approx(1.0)
    assert circular_correlation(a, a - 2.0) == pytest.approx(1.0)
    assert circular_correlation(a, g.uniform(-np.pi, np.pi, 500)) < 0.15
    x, y = np.array([0.1, 0.7, 2.0, -1.0, 3.0, -2.5, 1.1]), np.array([0.3, 0.2, 1.5, -2.0, 2.5, 2.9, -0.4])
    pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
    num = sum(math.sin(x[i] - x[j]) * math.sin(y[i] - y[j]) for i, j in pairs)
    den = math.sqrt(sum(math.sin(x[i] - x[j]) ** 2 for i, j in pairs)
                    * sum(math.sin(y[i] - y[j]) ** 2 for i, j in pairs))
    assert circular_correlation(x, y) == pytest.approx(abs(num) / den, rel=1e-12)
    assert circular_correlation(a, a + 0.3 * np.sin(2 * a)) > 0.95


def _wavy_circle(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A latent set with an in-plane angle ψ on a closed but bent curve (first and second harmonics, so that no
    two principal components are a circle) and a defocus axis, in 6 dims mixed by a random rotation ``q``
    (returned last: the defocus axis is its 5th column)."""
    g = np.random.default_rng(seed)
    psi, defocus = g.uniform(-np.pi, np.pi, n), g.uniform(5000, 25000, n)
    z = np.c_[3 * np.cos(psi), 2 * np.sin(psi), 2.5 * np.cos(2 * psi), 2.5 * np.sin(2 * psi),
              (defocus - 15000) / 8000, 0.05 * g.standard_normal(n)]
    q, _ = np.linalg.qr(g.standard_normal((6, 6)))
    return z @ q.T, psi, defocus, q


def test_latent_readout_recovers_the_angle_of_a_bent_closed_curve_and_a_defocus_axis():
    """On :func:`_wavy_circle`: the read-out angle has |ρ_T| > 0.97 with ψ (the first two principal components'
    angle has < 0.8 there: the reason the read-out is a spectral embedding); the cross-fitted defocus read-out
    has |Spearman ρ| > 0.97 and its axis is the mixed defocus direction; embedding a subset (``max_points``) and
    extending to the rest gives the same angle."""
    from cryolens.inference.vaegan import circular_coordinate

    z, psi, defocus, q = _wavy_circle(1500, 1)
    read = latent_readout(z, defocus)
    assert circular_correlation(read["angle"], psi) > 0.97
    assert circular_correlation(np.arctan2(read["pcs"][:, 1], read["pcs"][:, 0]), psi) < 0.8
    assert read["angle_circularity"] < 0.1
    assert abs(read["defocus_spearman"]) > 0.97 and abs(read["defocus_axis"] @ q[:, 4]) > 0.999
    assert read["defocus_spearman"] == pytest.approx(spearmanr(read["defocus_coordinate"], defocus)[0])
    sub, _, _, _ = circular_coordinate(z, max_points=800)
    assert circular_correlation(sub, psi) > 0.97


def test_vaegan_loss_terms_are_the_documented_ones():
    """forward's terms on a fixed batch (fixed noise draws): recon = mean Σ (x − x̂)² / (2e^s) + P s / 2,
    KL the standard-normal KL of the encoder's output, loss = (recon + β KL) / P + γ · adversarial."""
    config = get("cryovaegan").config({"zdim": 3, "enc_channels": 4, "dec_channels": 4, "hidden": 16,
                                       "critic_channels": 4, "critic_max_channels": 8, "beta": 0.7,
                                       "gan_weight": 0.3})
    torch.manual_seed(0)
    model = VAEGAN(16, config, norm=2.0)
    with torch.no_grad():
        model.log_scale.fill_(0.4)
    images = torch.randn(5, 16, 16)
    torch.manual_seed(5)
    terms = model({"image": images})
    torch.manual_seed(5)
    with torch.no_grad():
        mu, logvar, z, _ = model._decodes(images / 2.0)
        recon = model.decoder(z)
    p = 256
    rec = ((images / 2.0 - recon) ** 2).sum((-2, -1)) / (2 * math.exp(0.4)) + p * 0.4 / 2
    kl = kl_standard_normal(mu, logvar).mean()
    terms = {k: v.detach() for k, v in terms.items()}
    assert float(terms["recon"]) == pytest.approx(float(rec.mean()) / p, rel=1e-5)
    assert float(terms["kl"]) == pytest.approx(float(kl), rel=1e-5)
    expected = (float(rec.mean()) + 0.7 * float(kl)) / p + 0.3 * float(terms["adversarial"])
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)


def test_inplane_angles_of_one_view_are_the_psi_differences():
    """R_i = R_view · R_z(ψ_i) (R_view random): the read angles are ψ_i − ψ_0 (mod 2π), up to one direction."""
    from cryolens.imaging.rotations import inplane_rotation, random_rotations
    from cryolens.inference.vaegan import inplane_angles

    psi = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
    rots = random_rotations(1, torch.Generator().manual_seed(2), dtype=torch.float64) @ inplane_rotation(psi)
    d = np.angle(np.exp(1j * (inplane_angles(rots) - (psi - psi[0]).numpy())))
    e = np.angle(np.exp(1j * (inplane_angles(rots) + (psi - psi[0]).numpy())))
    assert np.abs(d).max() < 1e-9 or np.abs(e).max() < 1e-9


def test_adversarial_terms_train_the_decoder_only_and_see_draws_of_its_gaussian():
    """The adversarial term's gradient is zero on every encoder weight and non-zero on the decoder's (Larsen et
    al.'s rule: checked by autograd, so it fails if ``z`` reaches the critic undetached); what the critic is shown
    is ``mean + e^{s/2} ε``: over 200,000 draws the residual's variance is e^s within 1 %."""
    config = get("cryovaegan").config({"zdim": 3, "enc_channels": 4, "dec_channels": 4, "hidden": 16,
                                       "critic_channels": 4, "critic_max_channels": 8})
    torch.manual_seed(0)
    model = VAEGAN(16, config, norm=1.0)
    terms = model({"image": torch.randn(6, 16, 16)})
    enc = torch.autograd.grad(terms["adversarial"], list(model.encoder.parameters()), allow_unused=True)
    dec = torch.autograd.grad(terms["adversarial"], list(model.decoder.parameters()), allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in enc)
    assert sum(float(g.abs().sum()) for g in dec if g is not None) > 0
    with torch.no_grad():
        model.log_scale.fill_(-0.6)
        mean = torch.randn(50, 64, 64)
        residual = model._sample(mean) - mean
    assert float(residual.var()) == pytest.approx(math.exp(-0.6), rel=0.01)

"""CryoVAEGAN's parts: the latent read-outs (circular correlation, PCA angle, defocus component) against
closed-form cases, and the VAE-GAN's loss terms against a hand computation."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cryolens.inference.losses import kl_standard_normal
from cryolens.inference.vaegan import VAEGAN, circular_correlation, latent_readout
from cryolens.methods import get


def test_circular_correlation_is_offset_and_direction_free_and_matches_the_formula():
    """|ρ_c| = 1 for b = −a + 1.3 and for b = a − 2; ≈ 0 for independent angles; equal to the
    Jammalamadaka–SenGupta formula written out with the circular means on a 5-angle example."""
    g = np.random.default_rng(0)
    a = g.uniform(-np.pi, np.pi, 500)
    assert circular_correlation(a, -a + 1.3) == pytest.approx(1.0)
    assert circular_correlation(a, a - 2.0) == pytest.approx(1.0)
    assert circular_correlation(a, g.uniform(-np.pi, np.pi, 500)) < 0.15
    x, y = np.array([0.1, 0.7, 2.0, -1.0, 3.0]), np.array([0.3, 0.2, 1.5, -2.0, 2.5])
    mx, my = math.atan2(np.sin(x).sum(), np.cos(x).sum()), math.atan2(np.sin(y).sum(), np.cos(y).sum())
    num = sum(math.sin(p - mx) * math.sin(q - my) for p, q in zip(x, y))
    den = math.sqrt(sum(math.sin(p - mx) ** 2 for p in x) * sum(math.sin(q - my) ** 2 for q in y))
    assert circular_correlation(x, y) == pytest.approx(abs(num) / den, rel=1e-12)


def test_latent_readout_recovers_a_circle_and_a_defocus_axis_mixed_by_a_rotation():
    """z = Q · [3 cos ψ, 3 sin ψ, defocus/5000, small noise] (Q a random orthogonal 4×4): the PCA angle has
    |ρ_c| > 0.99 with ψ, and the defocus component (the 3rd) has |Spearman ρ| > 0.97 with the defocus."""
    g = np.random.default_rng(1)
    psi, defocus = g.uniform(-np.pi, np.pi, 400), g.uniform(5000, 25000, 400)
    z = np.c_[3 * np.cos(psi), 3 * np.sin(psi), (defocus - 15000) / 5000, 0.05 * g.standard_normal(400)]
    q, _ = np.linalg.qr(g.standard_normal((4, 4)))
    read = latent_readout(z @ q.T, defocus)
    assert circular_correlation(read["angle"], psi) > 0.99
    assert read["defocus_pc"] == 2 and abs(read["defocus_spearman"]) > 0.97  # finite-sample mixing of the PCs
    assert read["defocus_spearman"] == pytest.approx(spearmanr(read["defocus_coordinate"], defocus)[0])


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
        mu, logvar, recon, _ = model._decodes(images / 2.0)
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

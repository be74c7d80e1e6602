"""Adversarial training (WGAN-GP with the physics as generator): the gradient penalty against a hand
computation, the generator's images against real ones at the true volume (per-shell power), the WGAN
schedule on the one engine (critic steps per generator step, Adam betas, blur annealing), a fixed seed
giving the same losses twice and a resumed run continuing bit for bit; the noise σ from the background."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cryolens.imaging import gaussian_volume
from cryolens.imaging.ctf import ctf_2d
from cryolens.imaging.grids import gaussian_blur_2d
from cryolens.imaging.noise import background_sigma
from cryolens.imaging.spectra import image_power_spectrum
from cryolens.inference.adversarial import critic_losses, gradient_penalty
from cryolens.inference.engine import read_log
from cryolens.inference.simulator import PhysicsGenerator
from cryolens.io.dataset import read_images, read_particles
from cryolens.io.runfolder import RunFolder
from cryolens.methods import get
from cryolens.methods.adversarial import build_gan, train_gan
from cryolens.simulate.dataset import read_ground_truth, simulate_dataset
from cryolens.volumes.voxel import RealVoxelVolume

PX = 3.0


class _Linear(nn.Module):
    """D(x) = w · x over the flattened image."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1)


def small_volume(d: int) -> torch.Tensor:
    """Three Gaussian blobs within 4 px of the centre (the background ring beyond 0.4·D stays empty)."""
    c = torch.tensor([[-2.0, -1.0, 1.0], [2.0, 1.5, -1.0], [0.0, 0.0, 2.0]])
    return gaussian_volume(c, torch.tensor([1.5, 1.3, 1.2]), torch.tensor([1.0, 0.8, 0.7]), d)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """300 images of :func:`small_volume` (D 24, SNR 1, CTF 0.5–1.5 µm, no shifts) by the project's simulator."""
    out = simulate_dataset(tmp_path_factory.mktemp("gan") / "ds", small_volume(24), 300, PX, 1.0, seed=1,
                           defocus_range=(5000.0, 15000.0), progress=False)
    return out, read_particles(out / "particles.star")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """64 images of :func:`small_volume` at D 16 (SNR 1) for the training runs."""
    out = simulate_dataset(tmp_path_factory.mktemp("gan16") / "ds", small_volume(16), 64, PX, 1.0, seed=2,
                           progress=False)
    return read_particles(out / "particles.star")


def test_gradient_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    """For D(x) = w·x the input gradient is w wherever x̂ lies, so GP = λ (‖w‖ − 1)² (float64, any ε); and
    the Wasserstein estimate is w·(mean real − mean fake)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.3
    real, fake = torch.randn(5, 8, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, 8, generator=g,
                                                                                   dtype=torch.float64)
    critic = _Linear(w)
    expected = 2.5 * (float(w.norm()) - 1) ** 2
    for eps in (torch.rand(5, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), None):
        assert float(gradient_penalty(critic, real, fake, 2.5, eps).detach()) == pytest.approx(expected, rel=1e-12)
    terms = {k: v.detach() for k, v in critic_losses(critic, real, fake, 2.5).items()}
    assert float(terms["wasserstein"]) == pytest.approx(float((w * (real.mean(0) - fake.mean(0))).sum()), rel=1e-10)
    assert float(terms["critic"]) == pytest.approx(expected - float(terms["wasserstein"]), rel=1e-10)
    # the penalty's gradient in w: 2λ(‖w‖ − 1) w / ‖w‖
    gradient_penalty(critic, real, fake, 2.5).backward()
    n = float(w.norm())
    assert torch.allclose(critic.w.grad, 2 * 2.5 * (n - 1) * w / n, rtol=1e-10)


def test_generator_at_the_true_volume_has_the_real_images_per_shell_power(dataset):
    """600 fakes of the generator at the true volume — poses from the SO(3) prior, CTFs drawn from the dataset's,
    white noise of the σ measured on the images' background — have the per-shell power of the 300 simulated
    real images within 5 % in every shell; with the noise σ doubled the outer shells are ~4× off (the check
    can fail)."""
    out, particles = dataset
    real = read_images(particles, np.arange(len(particles)))
    sigma = background_sigma(real, 0.4 * 24)
    assert sigma == pytest.approx(float(read_ground_truth(out)["noise_sigma"]), rel=0.03)
    torch.manual_seed(0)
    gen = PhysicsGenerator(RealVoxelVolume(24, small_volume(24)), PX, particles.ctf, sigma)
    with torch.no_grad():
        ratio = image_power_spectrum(gen(600)) / image_power_spectrum(real)
        assert torch.all((ratio - 1).abs() < 0.05), ratio
        gen.noise_sigma = 2 * sigma
        assert float(image_power_spectrum(gen(600))[-1] / image_power_spectrum(real)[-1]) > 3


def test_phase_flipped_view_is_the_projection_through_the_ctf_magnitude(dataset):
    """``phase_flip``: what the critic sees of a clean fake is the projection filtered by ``|CTF|`` (numpy's FFT
    of the CTF-free projection times the CTF's magnitude), and white noise keeps its norm (the flip is a
    per-frequency sign, Friedel-symmetric); without ``phase_flip`` the view is the image itself."""
    _, particles = dataset
    config = get("cryogan").config({"phase_flip": True, "blur_sigma": 0.0, "norm_images": 64})
    torch.manual_seed(0)
    model = build_gan(RealVoxelVolume(24, small_volume(24)), particles, config)
    gen = model.generator
    with torch.no_grad():
        draw = gen.nuisance(16, torch.device("cpu"))
        seen = model.view(gen.clean(draw), draw["ctf"]).double().numpy()
        bare = gen.clean({**draw, "ctf": None}).double().numpy()
        raw = gen.clean(draw).double().numpy()
        noise = torch.randn(16, 24, 24)
        assert float(model.view(noise, draw["ctf"]).norm()) == pytest.approx(float(noise.norm()), rel=1e-5)
        model.phase_flip = False
        assert torch.equal(model.view(noise, draw["ctf"]), noise)
    mag = np.abs(ctf_2d(draw["ctf"], 24, PX).double().numpy())
    ft = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(bare, axes=(-2, -1))), axes=(-2, -1))
    ref = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(ft * mag, axes=(-2, -1))), axes=(-2, -1)).real
    assert np.abs(seen - ref).max() < 1e-4 * np.abs(ref).max()
    assert np.abs(seen - raw).max() > 0.1 * np.abs(ref).max()  # the flip did act


def test_generator_learning_rate_decays_per_epoch(small_dataset, tmp_path):
    """``lr_decay``: the generator's Adam runs at ``lr · lr_decay^epoch`` (3 epochs at 0.5: 0.25·lr in the last);
    the critic's keeps its own rate."""
    model, _ = _fit(small_dataset, tmp_path / "lr", epochs=3, lr_decay=0.5)
    state = torch.load(tmp_path / "lr" / "checkpoint.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.25e-3)
    assert model.critic_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_gaussian_blur_of_a_point_is_the_sampled_gaussian():
    """The blur of a unit point at the centre is the normalised Gaussian of σ sampled on the grid (σ 1.5 px,
    a 32 px box: the periodic wrap is negligible); σ 0 leaves images unchanged."""
    x = torch.zeros(1, 32, 32, dtype=torch.float64)
    x[0, 16, 16] = 1
    yy, xx = torch.meshgrid(torch.arange(32.0) - 16, torch.arange(32.0) - 16, indexing="ij")
    ref = torch.exp(-(xx**2 + yy**2) / (2 * 1.5**2)) / (2 * math.pi * 1.5**2)
    assert torch.allclose(gaussian_blur_2d(x, 1.5)[0], ref.double(), atol=1e-6)
    assert gaussian_blur_2d(x, 0.0) is x


def _fit(particles, run: Path, seed: int = 0, epochs: int = 2, resume: bool = False, **more):
    recipe = get("cryogan")
    config = recipe.config({"epochs": epochs, "norm_images": 64, "seed": seed, "critic_channels": 4,
                            "critic_max_channels": 8, "epoch_images": 32, "batch_size": 4, "resume": resume,
                            **more})
    torch.manual_seed(config.seed)
    model = build_gan(RealVoxelVolume(particles.box_size), particles, config)
    return model, train_gan(model, particles, RunFolder(run), config, "cpu", False)


def _losses(run: Path) -> list[tuple]:
    return [(r["loss"], r["critic"], r["wasserstein"]) for r in read_log(run / "log.jsonl") if "loss" in r]


def test_wgan_schedule_fixed_seed_and_resume_on_the_engine(small_dataset, tmp_path):
    """2 epochs of 32 real images, batch 4, 4 critic steps: 2 generator steps an epoch and 4 critic Adam steps
    per generator step, both optimisers with betas (0.5, 0.9); the blur σ is 2·0.98 in the second epoch; the
    per-epoch history carries generator and critic losses, penalty and Wasserstein estimate. The same seed
    again (1 epoch, then a resumed 2nd): the same losses at every step and the same map as 2 epochs straight
    (the critic's optimiser is checkpointed); another seed: different losses."""
    particles = small_dataset
    a, trained = _fit(particles, tmp_path / "a")
    assert len(_losses(tmp_path / "a")) == 4
    critic_state = a.critic_optimizer.state_dict()["state"]
    assert all(int(s["step"]) == 16 for s in critic_state.values())
    assert a.critic_optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    assert a.param_groups()[0]["betas"] == (0.5, 0.9)
    assert a.sigma == pytest.approx(2 * 0.98)
    assert [set(h) >= {"loss", "critic", "gradient_penalty", "wasserstein"} for h in trained["history"]] == [True] * 2
    _fit(particles, tmp_path / "c", seed=1)
    assert _losses(tmp_path / "c") != _losses(tmp_path / "a")
    _fit(particles, tmp_path / "d", epochs=1)
    assert _losses(tmp_path / "d") == _losses(tmp_path / "a")[:2]
    d, _ = _fit(particles, tmp_path / "d", epochs=2, resume=True)
    assert _losses(tmp_path / "d") == _losses(tmp_path / "a")
    assert torch.equal(d.generator.volume.density, a.generator.volume.density)


def test_generator_average_is_the_bias_corrected_exponential_mean(small_dataset):
    """With ``ema`` β the averaged volume after parameters θ₁…θₜ is Σₖ (1 − β) βᵗ⁻ᵏ θₖ / (1 − βᵗ) (a hand sum
    here); with no update yet it is the current volume; ``use_average`` loads it into the generator."""
    recipe = get("cryogan")
    config = recipe.config({"norm_images": 64, "critic_channels": 4, "critic_max_channels": 8, "ema": 0.7})
    model = build_gan(RealVoxelVolume(small_dataset.box_size), small_dataset, config)
    density = model.generator.volume.density
    with torch.no_grad():
        density.fill_(3.0)
    assert torch.equal(model.averaged()[0], density)
    thetas = [torch.rand_like(density, dtype=torch.float32) for _ in range(5)]
    for theta in thetas:
        with torch.no_grad():
            density.copy_(theta)
        model.update_average()
    beta, t = 0.7, len(thetas)
    expected = sum((1 - beta) * beta ** (t - k) * th for k, th in enumerate(thetas, start=1)) / (1 - beta**t)
    assert torch.allclose(model.averaged()[0], expected, atol=1e-6)
    model.use_average()
    assert torch.allclose(density, expected, atol=1e-6)
    assert "ema_0" in model.state_dict()  # checkpointed with the run


def test_lazy_gradient_penalty_on_every_kth_critic_step_with_k_times_the_weight(small_dataset, monkeypatch):
    """``gp_every`` 2 with 4 critic steps: the penalty is computed on critic steps 0 and 2 only, each with
    weight 2·``gp_weight``; the logged penalty is the mean of those two, the critic loss the mean over all
    four steps of −W (+ GP where computed)."""
    import cryolens.inference.adversarial as adv

    calls: list[float] = []
    real_gp = adv.gradient_penalty

    def spy(critic, real, fake, weight, eps=None):
        out = real_gp(critic, real, fake, weight, eps)
        calls.append((weight, float(out.detach())))
        return out

    monkeypatch.setattr(adv, "gradient_penalty", spy)
    config = get("cryogan").config({"norm_images": 64, "critic_channels": 4, "critic_max_channels": 8,
                                    "gp_every": 2, "gp_weight": 1.5})
    model = build_gan(RealVoxelVolume(small_dataset.box_size), small_dataset, config)
    images = read_images(small_dataset, np.arange(16))
    terms = model.before_step({"image": images}, None)
    assert [w for w, _ in calls] == [3.0, 3.0]
    assert float(terms["gradient_penalty"]) == pytest.approx(np.mean([g for _, g in calls]), rel=1e-6)
    assert float(terms["critic"]) == pytest.approx(sum(g for _, g in calls) / 4 - float(terms["wasserstein"]),
                                                   rel=1e-5, abs=1e-6)


def test_learned_noise_sigma_moves_to_the_true_one(tmp_path):
    """``learn_noise``: the generator at the true volume (frozen), its white noise σ started 40 % too high,
    only ``log σ`` trained on the adversarial loss (the critic's steps as in training; 96 images of
    :func:`small_volume` at D 16, SNR 1): σ ends within 8 % of the simulator's own noise σ."""
    out = simulate_dataset(tmp_path / "ds", small_volume(16), 96, PX, 1.0, seed=3, progress=False)
    particles = read_particles(out / "particles.star")
    true_sigma = float(read_ground_truth(out)["noise_sigma"])
    config = get("cryogan").config({"norm_images": 96, "critic_channels": 4, "critic_max_channels": 8,
                                    "learn_noise": True, "blur_sigma": 0.0, "n_critic": 2, "batch_size": 8})
    torch.manual_seed(0)
    model = build_gan(RealVoxelVolume(16, small_volume(16)), particles, config)
    norm = float(model.norm)
    with torch.no_grad():
        model.generator.volume.density.div_(norm)
        model.generator.log_noise.fill_(math.log(1.4 * true_sigma / norm))
    model.generator.volume.density.requires_grad_(False)
    opt = torch.optim.Adam([model.generator.log_noise], lr=0.03, betas=(0.5, 0.9))
    images = read_images(particles, np.arange(len(particles)))
    for _ in range(120):
        model.before_step({"image": images[torch.randint(len(images), (16,))]}, None)
        opt.zero_grad()
        model({"image": None})["loss"].backward()
        opt.step()
    learned = model.generator.noise_level() * norm
    assert learned == pytest.approx(true_sigma, rel=0.08), (learned, true_sigma)

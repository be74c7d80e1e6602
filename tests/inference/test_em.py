"""One full-posterior EM iteration (E-step over a pose grid + weighted back-projection / exact
M-step): one-hot weights reproduce back-projection, the marginal log-likelihood never decreases under
the exact M-step, and an iteration sharpens a low-passed start."""

import numpy as np
import pytest
import torch

from cryolens.imaging.ctf import CTFParams, ctf_2d
from cryolens.imaging.fft import fft2_centered, fft3_centered, ifft3_centered
from cryolens.imaging.forward import render_images
from cryolens.imaging.grids import lowpass_filter_3d
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.slice import prepare_volume_ft
from cryolens.imaging.so3_grid import so3_grid
from cryolens.inference.em import em_iteration, insert_weighted
from cryolens.inference.posterior import pose_posterior, translation_grid
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles
from cryolens.inference.reconstruct import FourierAccumulator
from cryolens.methods.backprojection import accumulate
from cryolens.metrics.fsc import fsc

from _inference_data import blob_volume

D = 16
PIX = 3.0  # Å/px


def _lowpass(vol, cutoff=0.15):
    return ifft3_centered(fft3_centered(vol) * lowpass_filter_3d(D, cutoff).to(vol.dtype)).real


def _noisy(n, noise_sd, seed=1, dtype=torch.float64):
    """``n`` images of the blob volume at random (off-grid) rotations and shifts in ±1 px, white noise
    of s.d. ``noise_sd`` px (σ² = s²·D² per Fourier component)."""
    g = torch.Generator().manual_seed(seed)
    vol = blob_volume(D, dtype=dtype)
    rots = random_rotations(n, generator=g, dtype=dtype)
    shifts = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 2
    img = render_images(vol, rots, shifts)
    img = img + noise_sd * torch.randn(img.shape, generator=g, dtype=dtype)
    sigma2 = torch.full((D // 2 + 1,), noise_sd**2 * D * D, dtype=dtype)
    return vol, img, sigma2


def test_one_hot_m_step_equals_backprojection(tmp_path):
    """Noise-free images with CTFs rendered exactly at grid poses (level-1 rotations × a 3×3 shift grid)
    and a small σ²: the posterior is one-hot at the true pose, and EM's accumulator (data Σ C·X̃ and
    weight Σ C²) equals backprojection.accumulate's with the true poses (independent path: per-image
    shift undo and CTF insertion)."""
    n = 60
    g = torch.Generator().manual_seed(3)
    vol = blob_volume(D)
    rots, shifts = so3_grid(1), translation_grid(1.0, 1.0)
    r_true = torch.randint(0, rots.shape[0], (n,), generator=g)
    t_true = torch.randint(0, shifts.shape[0], (n,), generator=g)
    du = 8000 + 8000 * torch.rand(n, generator=g)
    ctf = CTFParams.create(du, du - 400, 0.3)
    images = render_images(vol, rots[r_true], shifts[t_true], ctf, PIX)
    path = tmp_path / "stack.mrcs"
    write_stack(path, images.numpy(), PIX)
    particles = Particles(PIX, D, [str(path)], np.zeros(n, int), np.arange(n), rots[r_true], shifts[t_true], ctf)

    sigma2 = torch.full((D // 2 + 1,), 1e-2 * D * D)
    res = em_iteration(particles, vol, sigma2, rots, shifts, batch_size=32)
    assert torch.equal(res.map_rotation_index, r_true) and torch.equal(res.map_shift_index, t_true)
    assert res.max_weight.min() > 1 - 1e-6 and int(res.n_significant.max()) == 1

    h1, h2 = accumulate(particles, progress=False)
    ref = h1.merged(h2)
    scale_d, scale_w = ref.data.abs().max(), ref.weight.abs().max()
    torch.testing.assert_close(res.accumulator.data / scale_d, ref.data / scale_d, rtol=0, atol=2e-5)
    torch.testing.assert_close(res.accumulator.weight / scale_w, ref.weight / scale_w, rtol=0, atol=2e-5)
    # and the one-hot pairs are not trivially equal to a wrong-pose accumulation
    particles.shifts = -particles.shifts
    wrong = accumulate(particles, progress=False)
    assert (wrong[0].merged(wrong[1]).data - ref.data).abs().max() > 0.05 * scale_d


def test_exact_em_never_decreases_the_log_likelihood(device):
    """EM at fixed σ² with the exact E-step (mass 1) and the exact least-squares M-step (CG on the
    voxel grid, the E-step's own projector) is a (generalised) EM algorithm, so the marginal
    log-likelihood Σ log p(Y_i) does not decrease: 5 iterations from a low-passed start, 200 off-grid
    noisy images, 576 rotations × 9 shifts. It must also rise overall (the start is not a maximum)."""
    vol, img, sigma2 = _noisy(200, 1.0)
    rots, shifts = so3_grid(1, dtype=torch.float64), translation_grid(1.0, 1.0, dtype=torch.float64)
    v = _lowpass(vol).to(device)
    lls = []
    for _ in range(5):
        res = em_iteration(img, v, sigma2, rots, shifts, mass=1.0, max_significant=rots.shape[0] * 9,
                           m_step="exact", batch_size=100, device=device)
        lls.append(res.log_likelihood)
        v = res.volume
    steps = np.diff(lls)
    assert (steps >= -1e-9 * abs(lls[0])).all(), lls
    assert lls[-1] - lls[0] > 1000.0, lls


@pytest.mark.parametrize("m_step", ["insert", "exact"])
def test_em_sharpens_a_lowpassed_start(m_step, device):
    """From the truth low-passed at 0.15 cycles/px (FSC ≈ 0 beyond shell 3), one EM iteration on 200
    noisy off-grid images brings the map's FSC to the truth up in shells 3–6 (the poses found from the
    low-resolution map carry high-resolution information), and the σ² estimate lands near the true
    noise power at high frequency (where pose errors matter least)."""
    vol, img, sigma2 = _noisy(200, 1.0)
    rots, shifts = so3_grid(1, dtype=torch.float64), translation_grid(1.0, 1.0, dtype=torch.float64)
    start = _lowpass(vol)
    before = np.asarray(fsc(start, vol))
    res = em_iteration(img, start, sigma2, rots, shifts, m_step=m_step, batch_size=100, device=device)
    assert res.volume.device.type == device.type
    after = np.asarray(fsc(res.volume.cpu(), vol))
    assert before[3:7].mean() < 0.2
    assert after[3:7].mean() > before[3:7].mean() + 0.4, (before, after)
    ratio = (res.sigma2.cpu() / sigma2).numpy()
    assert 0.8 < ratio[-1] < 1.2, ratio


def test_aggregated_insertion_equals_pairwise_insertion():
    """EM inserts per-rotation sums Σ w C Y' and Σ w C² (insertion is linear); this equals inserting
    every significant (image, pose) pair on its own with FourierAccumulator.add(scale=w) after
    undoing its shift (insert_weighted), on a broad posterior with many poses per image and a CTF."""
    vol, img, sigma2 = _noisy(40, 2.0)
    sigma2 = sigma2 * 4  # tempered: several poses per image
    ctf = CTFParams.create(torch.linspace(8000, 16000, 40), dtype=torch.float64)
    rots, shifts = so3_grid(1, dtype=torch.float64), translation_grid(1.0, 1.0, dtype=torch.float64)
    start = _lowpass(vol)
    res = em_iteration(img, start, sigma2, rots, shifts, ctf=ctf, pixel_size=PIX, batch_size=40,
                       weight_floor=0.0)
    assert res.n_significant.float().mean() > 5

    y = fft2_centered(img)
    c = ctf_2d(ctf, D, PIX, dtype=torch.float64)
    post = pose_posterior(y, prepare_volume_ft(start), rots, shifts, sigma2, ctf=c, max_significant=1000)
    keep = post.rotation_index >= 0
    w = post.weight / post.weight.sum(1, keepdim=True)
    bi, ki = keep.nonzero(as_tuple=True)
    acc = FourierAccumulator(D, 2, "cpu", torch.float64)
    insert_weighted(acc, y, c, bi, rots[post.rotation_index[bi, ki]], shifts[post.shift_index[bi, ki]], w[bi, ki])
    torch.testing.assert_close(res.accumulator.data, acc.data, rtol=1e-9, atol=1e-9 * float(acc.data.abs().max()))
    torch.testing.assert_close(res.accumulator.weight, acc.weight, rtol=1e-9,
                               atol=1e-9 * float(acc.weight.abs().max()))

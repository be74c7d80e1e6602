"""Discrete classes (RELION Class3D): the posterior over (class, rotation, shift) against a float64
brute force, its one-class reduction to the pose posterior, the class-prior update, the modal
variant, and classification of two very different volumes."""

import math

import numpy as np
import torch

from cryolens.imaging.ctf import CTFParams
from cryolens.imaging.fft import fft2_centered, fft3_centered, ifft3_centered
from cryolens.imaging.forward import forward_fourier, render_images
from cryolens.imaging.grids import lowpass_filter_3d
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.slice import prepare_volume_ft
from cryolens.imaging.so3_grid import so3_grid
from cryolens.imaging.spectra import power_spectrum, projector_power_spectrum
from cryolens.inference.classes import class_em_iteration
from cryolens.inference.estep import class_pose_posterior
from cryolens.inference.prior import map_prior
from cryolens.inference.posterior import pose_posterior, translation_grid
from cryolens.metrics.fsc import fsc

from _inference_data import blob_volume

D = 16
PIX = 3.0  # Å/px


def _ctf(n, dtype=torch.float64):
    return CTFParams.create(torch.linspace(8000, 20000, n), torch.linspace(7000, 21000, n),
                            defocus_angle=0.4, dtype=dtype)


def _two_class_images(n, noise_sd, seed=0, labels=None, dtype=torch.float64):
    """Images of two blob volumes (seeds 0 and 5) at random poses, shifts in ±1 px, CTF, white noise."""
    g = torch.Generator().manual_seed(seed)
    vols = torch.stack([blob_volume(D, seed=0, dtype=dtype), blob_volume(D, n_blobs=6, seed=5, dtype=dtype)])
    lab = torch.randint(0, 2, (n,), generator=g) if labels is None else torch.as_tensor(labels)
    rots = random_rotations(n, generator=g, dtype=dtype)
    shifts = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 2
    ctf = _ctf(n, dtype)
    img = torch.empty(n, D, D, dtype=dtype)
    for k in range(2):
        m = lab == k
        img[m] = render_images(vols[k], rots[m], shifts[m], ctf[m], PIX)
    img = img + noise_sd * torch.randn(img.shape, generator=g, dtype=dtype)
    return vols, img, lab, ctf


def _brute_force(images_ft, vfts, rotations, shifts, sigma2, k_max, ctf, log_pi):
    """Every (image, class, rotation, shift) rendered with forward_fourier, the Gaussian
    log-likelihood written from its definition with numpy shells, plus log π_k − log(M·T), softmax
    over the whole (class, pose) table. Returns weights (B, K, M, T) and log-evidence (B,), float64."""
    b, k, m, t = images_ft.shape[0], len(vfts), rotations.shape[0], shifts.shape[0]
    i = np.arange(D) - D // 2
    shell = np.rint(np.hypot(i[None, :], i[:, None])).astype(int)
    inside = torch.as_tensor(shell <= k_max)
    inv2s2 = 1.0 / (2.0 * sigma2[torch.as_tensor(np.minimum(shell, D // 2))])
    ll = torch.empty(b, k, m, t, dtype=torch.float64)
    for bi in range(b):
        ctf_b = ctf[torch.full((m * t,), bi, dtype=torch.long)]
        for kc in range(k):
            preds = forward_fourier(vfts[kc], rotations.repeat_interleave(t, 0), D, shifts.repeat(m, 1), ctf_b, PIX)
            r2 = (images_ft[bi] - preds).abs() ** 2  # (M·T, D, D)
            ll[bi, kc] = -(r2 * inv2s2)[:, inside].sum(-1).reshape(m, t)
    logp = ll + log_pi[None, :, None, None] - math.log(m * t)
    lse = torch.logsumexp(logp.reshape(b, -1), dim=1)
    return torch.exp(logp - lse[:, None, None, None]), lse


def test_class_posterior_equals_brute_force():
    """class_pose_posterior (chunked over classes × rotations, expanded likelihood) reproduces a
    brute-force float64 posterior over 2 classes × 72 rotations × 9 shifts to 1e-6: the weights, the
    log-evidence and the exact class probabilities (sums of the brute-force table), with unequal
    class priors, a CTF, coloured σ² and a frequency limit; its modal triple is the table's argmax."""
    vols, img, _, ctf = _two_class_images(3, noise_sd=0.3, seed=1)
    y = fft2_centered(img)
    vfts = [prepare_volume_ft(v) for v in vols]
    rots = so3_grid(0, dtype=torch.float64)
    shifts = translation_grid(1.0, 1.0, dtype=torch.float64)
    k = torch.arange(D // 2 + 1, dtype=torch.float64)
    sigma2 = (0.3**2 * D * D) * (1 + 0.5 * k) * 150.0  # tempered: broad posterior, both classes weigh
    log_pi = torch.log(torch.tensor([0.3, 0.7], dtype=torch.float64))
    want_w, want_lse = _brute_force(y, vfts, rots, shifts, sigma2, 5, ctf, log_pi)
    post = class_pose_posterior(y, vfts, rots, shifts, sigma2, ctf=ctf, pixel_size=PIX, k_max=5,
                                log_class_prior=log_pi, mass=1.0, max_significant=2 * 72 * 9, rotation_chunk=11)
    assert (want_w > 1e-3).sum(dim=(1, 2, 3)).min() >= 5, "test posterior should not be one-hot"
    cls = want_w.sum((2, 3))
    assert float(cls.min()) > 1e-3, "both classes should carry weight"
    # mass = 1 stops once the float64 cumulative sum reaches 1: weights below ~1e-15 may be cut
    torch.testing.assert_close(post.dense(2, 72, 9), want_w, rtol=1e-6, atol=1e-14)
    torch.testing.assert_close(post.log_evidence, want_lse, rtol=1e-6, atol=0)
    torch.testing.assert_close(post.class_probability, cls, rtol=1e-6, atol=1e-12)
    flat = want_w.reshape(3, -1).argmax(1)
    assert post.class_index[:, 0].tolist() == (flat // (72 * 9)).tolist()
    assert post.rotation_index[:, 0].tolist() == ((flat // 9) % 72).tolist()
    assert post.shift_index[:, 0].tolist() == (flat % 9).tolist()


def test_one_class_equals_pose_posterior():
    """With one class, class_pose_posterior equals the existing pose_posterior (weights, indices,
    count, log-evidence, MAP log-likelihood) and its class probability is 1."""
    vols, img, _, ctf = _two_class_images(4, noise_sd=0.5, seed=2)
    y = fft2_centered(img)
    vft = prepare_volume_ft(vols[0])
    rots = so3_grid(1, dtype=torch.float64)
    shifts = translation_grid(1.0, 1.0, dtype=torch.float64)
    sigma2 = torch.full((D // 2 + 1,), 8 * 0.5**2 * D * D, dtype=torch.float64)
    kw = dict(ctf=ctf, pixel_size=PIX, k_max=6, mass=0.99, max_significant=50, rotation_chunk=100)
    a = class_pose_posterior(y, [vft], rots, shifts, sigma2, **kw)
    b = pose_posterior(y, vft, rots, shifts, sigma2, **kw)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-12, atol=1e-15)
    assert torch.equal(a.rotation_index, b.rotation_index) and torch.equal(a.shift_index, b.shift_index)
    assert torch.equal(a.count, b.count)
    torch.testing.assert_close(a.log_evidence, b.log_evidence, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.map_log_likelihood, b.map_log_likelihood, rtol=1e-12, atol=0)
    assert bool((a.class_probability == 1).all())
    assert bool((a.class_index[a.rotation_index >= 0] == 0).all())


def test_class_prior_update_is_the_mean_class_posterior():
    """One EM iteration's new π_k equals the mean over images of the brute-force class posterior
    P(k | Y_i) (independent float64 table) — on a constructed set of 9 images of class 0 and 3 of
    class 1 at a broad posterior — and, in the modal variant, the fraction of images whose
    brute-force argmax triple is in class k."""
    labels = [0] * 9 + [1] * 3
    vols, img, _, ctf = _two_class_images(12, noise_sd=0.4, seed=3, labels=labels)
    rots = so3_grid(0, dtype=torch.float64)
    shifts = translation_grid(1.0, 1.0, dtype=torch.float64)
    sigma2 = torch.full((D // 2 + 1,), 30 * 0.4**2 * D * D, dtype=torch.float64)
    prior = torch.tensor([0.4, 0.6], dtype=torch.float64)
    want_w, _ = _brute_force(fft2_centered(img), [prepare_volume_ft(v) for v in vols], rots, shifts, sigma2, 5,
                             ctf, torch.log(prior))
    cls = want_w.sum((2, 3))
    assert 0.05 < float(cls[:, 1].mean()) < 0.95
    kw = dict(ctf=ctf, pixel_size=PIX, k_max=5, batch_size=5, mass=1.0, max_significant=2 * 72 * 9)
    res = class_em_iteration(img, vols, sigma2, rots, shifts, prior, **kw)
    torch.testing.assert_close(res.class_prior, cls.mean(0), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(res.class_probability, cls, rtol=1e-8, atol=1e-12)
    modal = class_em_iteration(img, vols, sigma2, rots, shifts, prior, modal=True, **kw)
    best_class = want_w.reshape(12, -1).argmax(1) // (72 * 9)
    want = torch.bincount(best_class, minlength=2).double() / 12
    torch.testing.assert_close(modal.class_prior, want)
    assert modal.n_significant.tolist() == [1] * 12


def _lowpass(vol, cutoff):
    return ifft3_centered(fft3_centered(vol) * lowpass_filter_3d(D, cutoff).to(vol.dtype)).real


def test_two_very_different_volumes_are_classified(device):
    """160 high-SNR images of two different blob volumes (random off-grid poses, CTF); Class3D EM
    started from the two maps low-passed to 1/4 cycle/px (a 12 Å start at 3 Å/px): after
    3 iterations the class of every image is recovered (≥ 99 %, best label matching), the class
    priors match the true populations within 0.03, and each map correlates better with its own truth
    than the start did (FSC over shells 1–5)."""
    n = 160
    vols, img, lab, ctf = _two_class_images(n, noise_sd=0.5, seed=4, dtype=torch.float32)
    start = torch.stack([_lowpass(v, 0.25) for v in vols])
    rots = so3_grid(1)
    shifts = translation_grid(1.0, 1.0)
    sigma2 = torch.full((D // 2 + 1,), 0.5**2 * D * D)
    prior = None
    cur = start
    tau2 = None
    for _ in range(3):
        res = class_em_iteration(img, cur, sigma2, rots, shifts, prior, tau2=tau2, ctf=ctf.to(dtype=torch.float32),
                                 pixel_size=PIX, k_max=6, batch_size=80, mass=0.99, max_significant=200, device=device)
        assert res.volumes.device.type == device.type
        cur, prior, sigma2, tau2 = res.volumes.cpu(), res.class_prior, res.sigma2.cpu(), res.tau2.cpu()
    est = res.labels.cpu()
    acc = max(float((est == lab).float().mean()), float((est == 1 - lab).float().mean()))
    assert acc >= 0.99
    pops = torch.bincount(lab, minlength=2).double() / n
    swapped = float((est == 1 - lab).float().mean()) > 0.5
    got = res.class_prior.flip(0) if swapped else res.class_prior
    torch.testing.assert_close(got, pops, atol=0.03, rtol=0)
    for k in range(2):
        kk = 1 - k if swapped else k
        f_new = fsc(cur[kk], vols[k])[1:6].mean()
        f_old = fsc(start[k], vols[k])[1:6].mean()
        assert f_new > f_old + 0.02


def test_power_spectrum_of_a_plane_wave():
    """A real cosine plane wave at integer frequency (3, 0, 0) has all its power, D³/2 squared per
    component pair, in shell 3: ⟨|F|²⟩ over that shell = 2·(D³/2)² / (number of voxels in shell 3)."""
    x = torch.arange(D, dtype=torch.float64) - D // 2
    vol = torch.cos(2 * math.pi * 3 * x / D)[None, None, :].expand(D, D, D)
    ps = power_spectrum(vol)
    from cryolens.imaging.grids import shell_index_3d
    n3 = int((shell_index_3d(D) == 3).sum())
    assert float(ps[[0, 1, 2, 4, 5]].abs().max()) < 1e-12 * float(ps[3])
    torch.testing.assert_close(ps[3], torch.tensor(2 * (D**3 / 2) ** 2 / n3, dtype=torch.float64))


def test_working_box_leaves_the_posterior_nearly_unchanged():
    """Cropping images and maps to a 12-px working box (RELION's current_size) for a k_max = 5
    likelihood scores the same frequencies (σ² scaled by (d/D)⁴; shifts rescaled): class probabilities
    agree with working at D = 16 within 0.01 and the MAP classes, rotations and shifts (in the full
    box's pixels) are the same — the remaining difference is the trilinear slicing of the resized
    map, whose interpolation error differs between boxes."""
    vols, img, _, ctf = _two_class_images(10, noise_sd=0.4, seed=6)
    rots = so3_grid(0, dtype=torch.float64)
    shifts = translation_grid(1.0, 1.0, dtype=torch.float64)
    sigma2 = torch.full((D // 2 + 1,), 20 * 0.4**2 * D * D, dtype=torch.float64)
    kw = dict(ctf=ctf, pixel_size=PIX, k_max=5, batch_size=4, mass=0.999, max_significant=300)
    a = class_em_iteration(img, vols, sigma2, rots, shifts, **kw)
    b = class_em_iteration(img, vols, sigma2, rots, shifts, work_size=12, **kw)
    torch.testing.assert_close(b.class_probability, a.class_probability, rtol=0, atol=0.01)
    assert torch.equal(a.map_rotation_index, b.map_rotation_index) and torch.equal(a.map_class, b.map_class)
    torch.testing.assert_close(b.map_shift, a.map_shift)
    assert b.volumes.shape == a.volumes.shape and b.sigma2.shape == a.sigma2.shape


def test_map_prior_is_relions_with_a_weak_prior_where_tau2_is_zero():
    """Per shell, against RELION's backprojector.cpp written out by hand: λ = σ²/(pad³ T τ²) where
    τ² > 0; where τ² is zero (here exact zeros and float32 rounding residue 1e-14 × the peak) λ = 0
    and the per-voxel term is σ⁴/(0.004 D⁸) (RELION's 1/(0.001·invw) with its whitened weight
    invw = 2 D⁴ W / σ²); below minres_map no prior at all."""
    sigma2 = torch.tensor([4.0, 5.0, 6.0, 7.0, 8.0, 9.0], dtype=torch.float64)
    tau2 = torch.tensor([[100.0, 50.0, 10.0, 2.0, 1e-13, 0.0]], dtype=torch.float64)
    lam, inv = map_prior(sigma2, tau2, 4.0 * 2 ** 3, weak_prior=True)
    want = sigma2[:4] / (8 * 4.0 * tau2[0, :4])
    torch.testing.assert_close(lam[0, :4], want)
    assert inv[0, :4].tolist() == [0.0] * 4
    assert lam[0, 4:].tolist() == [0.0, 0.0]
    box = 10  # 2 (len(sigma2) − 1)
    kappa = 2 * box**4 / sigma2[4:]
    torch.testing.assert_close(inv[0, 4:], 1 / (1e-3 * kappa**2))
    lam2, inv2 = map_prior(sigma2, tau2, 4.0 * 2 ** 3, weak_prior=True, minres_map=2)
    assert lam2[0, :2].tolist() == [0.0, 0.0] and inv2[0, :2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(lam2[0, 2:], lam[0, 2:])


def test_class_maps_grow_the_frequencies_the_start_map_lacked():
    """One Class3D iteration (one class; 80 images taken at grid rotations, so the search can find them)
    from the true blob low-passed to 0.2 cycle/px (no power above shell 3 of 16 but rounding residue):
    with RELION's weak prior where τ² is zero the new map has content above the cutoff that correlates
    with the truth (FSC > 0.8 over shells 4–6); with an infinite regulariser there (the prior taken
    literally) those shells would stay zero."""
    g = torch.Generator().manual_seed(7)
    vol = blob_volume(D, seed=0, dtype=torch.float32)
    rots = so3_grid(1)
    pick = torch.randperm(rots.shape[0], generator=g)[:80]
    ctf = _ctf(80, torch.float32)
    img = render_images(vol, rots[pick], torch.zeros(80, 2), ctf, PIX)
    img = img + 0.2 * torch.randn(img.shape, generator=g)
    start = _lowpass(vol, 0.2)[None]
    ps = power_spectrum(start[0])
    assert float(ps[4:].max()) < 1e-12 * float(ps.max())  # rounding residue only
    sigma2 = torch.full((D // 2 + 1,), 0.2**2 * D * D)
    res = class_em_iteration(img, start, sigma2, rots, translation_grid(0.0, 1.0), None, ctf=ctf, pixel_size=PIX,
                             k_max=6, batch_size=80, mass=0.99, max_significant=200)
    assert (res.map_rotation_index.cpu() == pick).float().mean() > 0.9
    assert float(res.tau2[0, 4:7].min()) > 1e-6 * float(res.tau2[0].max())
    assert float(fsc(res.volumes[0], vol)[4:7].mean()) > 0.8


def test_projector_power_spectrum_keeps_the_gridding_leak_of_a_low_passed_map():
    """τ² as RELION's projector computes it: for a smooth map it agrees with the plain power spectrum
    at low shells within a factor 2 (same units: zero padding keeps the sums; the gridding correction
    raises the map towards the box edge, more in a 16-px box), and for the map low-passed
    to 0.2 cycle/px it keeps 1e-9 … 1e-2 of the peak power above the cut-off (the gridding correction's
    spread, ~1e-4 … 1e-6 in RELION's _rlnReferenceTau2 of its first iteration), where the plain spectrum
    has only rounding residue."""
    vol = blob_volume(D, seed=0, dtype=torch.float64)
    plain = power_spectrum(vol)
    proj = projector_power_spectrum(prepare_volume_ft(vol, 2), D)
    ratio = proj[:5] / plain[:5]
    assert float(ratio.min()) > 0.5 and float(ratio.max()) < 2.0
    low = _lowpass(vol, 0.2)
    plain_low = power_spectrum(low)
    proj_low = projector_power_spectrum(prepare_volume_ft(low, 2), D)
    assert float(plain_low[4:].max()) < 1e-20 * float(plain_low.max())
    rel = proj_low[4:] / proj_low.max()
    assert float(rel.min()) > 1e-9 and float(rel.max()) < 1e-2


def _particles(tmp_path, img, rots, shifts, ctf):
    from cryolens.io.mrc import write_stack
    from cryolens.io.particles import Particles

    path = tmp_path / "stack.mrcs"
    write_stack(path, img.float().numpy(), PIX)
    n = img.shape[0]
    return Particles(PIX, D, [str(path)], np.zeros(n, int), np.arange(n), rots.float(), shifts.float(),
                     ctf.to(dtype=torch.float32))


def test_fixed_pose_class_posterior_equals_brute_force(tmp_path):
    """class_em_iteration_fixed_poses (RELION's --skip_align): each image's class probabilities equal a
    float64 brute force at its own given pose (forward_fourier with its shift and CTF, the Gaussian
    log-likelihood from its definition over shells ≤ k_max, unequal class priors), and the new class
    prior is their mean."""
    from cryolens.imaging.forward import forward_fourier
    from cryolens.inference.classes import class_em_iteration_fixed_poses

    g = torch.Generator().manual_seed(7)
    vols, img, lab, ctf = _two_class_images(10, noise_sd=0.4, seed=7)
    rots = random_rotations(10, generator=g, dtype=torch.float64)  # re-render at known poses
    shifts = (torch.rand(10, 2, generator=g, dtype=torch.float64) - 0.5) * 2
    img = torch.stack([render_images(vols[int(lab[i])], rots[i:i + 1], shifts[i:i + 1], ctf[[i]], PIX)[0]
                       for i in range(10)]) + 0.4 * torch.randn(10, D, D, generator=g, dtype=torch.float64)
    p = _particles(tmp_path, img, rots, shifts, ctf)
    sigma2 = torch.full((D // 2 + 1,), 40 * 0.4**2 * D * D, dtype=torch.float64)  # tempered: both classes weigh
    prior = torch.tensor([0.35, 0.65], dtype=torch.float64)
    res = class_em_iteration_fixed_poses(p, vols, sigma2, prior, k_max=5, batch_size=4)
    y = fft2_centered(torch.as_tensor(np.asarray(img, dtype=np.float32)).double())
    i = np.arange(D) - D // 2
    shell = np.rint(np.hypot(i[None, :], i[:, None])).astype(int)
    inside = torch.as_tensor(shell <= 5)
    ll = torch.empty(10, 2, dtype=torch.float64)
    for b in range(10):
        for k in range(2):
            pred = forward_fourier(prepare_volume_ft(vols[k]), p.rotations[b:b + 1].double(), D,
                                   p.shifts[b:b + 1].double(), p.ctf[[b]], PIX)[0]
            ll[b, k] = -((y[b] - pred).abs() ** 2 / (2 * sigma2[0]))[inside].sum()
    want = torch.softmax(ll + torch.log(prior), 1)
    assert 0.05 < float(want[:, 1].mean()) < 0.95
    torch.testing.assert_close(res.class_probability.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.class_prior, want.mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(res.map_rotation_index, torch.arange(10))
    # in a 12-px working box (RELION's current_size) the same frequencies are scored: the same
    # probabilities up to the trilinear slicing of the resized maps; the outputs stay at the full box
    crop = class_em_iteration_fixed_poses(p, vols, sigma2, prior, k_max=5, batch_size=4, work_size=12)
    torch.testing.assert_close(crop.class_probability.double(), want, rtol=0, atol=0.01)
    assert crop.volumes.shape == res.volumes.shape and crop.sigma2.shape == res.sigma2.shape
    torch.testing.assert_close(crop.sigma2[:6], res.sigma2[:6], rtol=0.05, atol=0)
    assert float(fsc(crop.volumes[1], res.volumes[1])[:5].min()) > 0.95
    ratio = power_spectrum(crop.volumes[1])[1:5] / power_spectrum(res.volumes[1])[1:5]
    assert float((ratio - 1).abs().max()) < 0.15, ratio


def test_fixed_pose_m_step_prunes_insignificant_classes(tmp_path):
    """An image goes into class k only where P(k | Y) ≥ weight_floor · max_k P(k | Y): with a floor of 1
    each image is inserted into its best class alone — the modal variant's maps — while the class
    probabilities stay soft; a zero floor and the default 1e-6 give the same maps to 1e-5."""
    from cryolens.inference.classes import class_em_iteration_fixed_poses

    g = torch.Generator().manual_seed(3)
    vols, _, lab, ctf = _two_class_images(12, noise_sd=0.4, seed=3)
    rots = random_rotations(12, generator=g, dtype=torch.float64)
    img = torch.stack([render_images(vols[int(lab[i])], rots[i:i + 1], None, ctf[[i]], PIX)[0]
                       for i in range(12)]) + 0.4 * torch.randn(12, D, D, generator=g, dtype=torch.float64)
    p = _particles(tmp_path, img, rots, torch.zeros(12, 2, dtype=torch.float64), ctf)
    sigma2 = torch.full((D // 2 + 1,), 1000 * 0.4**2 * D * D, dtype=torch.float64)  # tempered: soft classes
    kw = dict(k_max=5, batch_size=5)
    soft = class_em_iteration_fixed_poses(p, vols, sigma2, weight_floor=0.0, **kw)
    assert 0.05 < float(soft.class_probability[:, 1].mean()) < 0.95 and float(soft.max_weight.min()) < 0.99
    default = class_em_iteration_fixed_poses(p, vols, sigma2, **kw)
    torch.testing.assert_close(default.volumes, soft.volumes, rtol=0, atol=1e-5 * float(soft.volumes.abs().max()))
    hard = class_em_iteration_fixed_poses(p, vols, sigma2, weight_floor=1.0, **kw)
    modal = class_em_iteration_fixed_poses(p, vols, sigma2, modal=True, **kw)
    torch.testing.assert_close(hard.volumes, modal.volumes)
    torch.testing.assert_close(hard.class_probability, soft.class_probability)
    assert not torch.allclose(hard.volumes, soft.volumes, rtol=0, atol=1e-3 * float(soft.volumes.abs().max()))


def test_skip_align_classifies_two_volumes_at_given_poses(tmp_path, device):
    """The relion-class3d recipe with skip_align: 300 images (SNR ≈ 0.1) of two blob volumes at their
    given poses, started from one low-passed average with a random first assignment, recover the
    classes (≥ 95 %; 99.3 % measured) and return the given poses; with the poses shuffled among the
    images they do not (< 80 %); without poses it refuses with one line."""
    import pytest

    from cryolens.errors import InputError
    from cryolens.methods.class3d import classify

    n = 300
    vols, img, lab, ctf = _two_class_images(n, noise_sd=3.0, seed=8, dtype=torch.float32)
    g = torch.Generator().manual_seed(8)
    rots = random_rotations(n, generator=g)
    shifts = (torch.rand(n, 2, generator=g) - 0.5) * 2
    img = torch.stack([render_images(vols[int(lab[i])], rots[i:i + 1], shifts[i:i + 1],
                                     ctf[[i]].to(dtype=torch.float32), PIX)[0] for i in range(n)])
    img = img + 3.0 * torch.randn(n, D, D, generator=g)
    p = _particles(tmp_path, img, rots, shifts, ctf)
    res = classify(p, vols.mean(0), {"n_classes": 2, "n_iterations": 6, "skip_align": True, "initial_lowpass": 12.0},
                   device=device, progress=False)
    acc = max(float(np.mean(res.labels == lab.numpy())), float(np.mean(res.labels == 1 - lab.numpy())))
    assert acc >= 0.95, acc
    assert torch.allclose(res.rotations, p.rotations) and torch.allclose(res.shifts, p.shifts)
    # control: the same images with their poses shuffled among them do not separate (0.62 measured)
    shuffled = p.subset(np.arange(n))
    shuffled.rotations = p.rotations[torch.randperm(n, generator=g)]
    bad = classify(shuffled, vols.mean(0), {"n_classes": 2, "n_iterations": 6, "skip_align": True,
                                            "initial_lowpass": 12.0}, progress=False)
    assert max(float(np.mean(bad.labels == lab.numpy())), float(np.mean(bad.labels == 1 - lab.numpy()))) < 0.8
    p.rotations = None
    with pytest.raises(InputError, match="no poses"):
        classify(p, vols.mean(0), {"n_classes": 2, "skip_align": True}, progress=False)

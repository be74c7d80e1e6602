"""The pose posterior (E-step) over rotations × shifts: against a brute-force computation, chunking,
significant-weight pruning, and the sign and axes of translations."""

import math

import numpy as np
import pytest
import torch

from cryolens.imaging.ctf import CTFParams
from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.forward import forward_fourier, render_images
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.so3_grid import so3_grid
from cryolens.inference.posterior import pose_posterior, translation_grid

from _inference_data import blob_volume, blob_volume_ft

D = 16
PIX = 3.0  # Å/px


def _ctf(n, device, dtype=torch.float64):
    return CTFParams.create(torch.linspace(8000, 20000, n), torch.linspace(7000, 21000, n),
                            defocus_angle=0.4, device=device, dtype=dtype)


def _noisy_images(n, device, noise_sd, seed=0):
    """``n`` float64 images of the blob volume at random poses and shifts, with CTF and white noise."""
    g = torch.Generator().manual_seed(seed)
    vol = blob_volume(D, seed=seed, dtype=torch.float64).to(device)
    rots = random_rotations(n, generator=g, dtype=torch.float64).to(device)
    shifts = ((torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 2).to(device)
    img = render_images(vol, rots, shifts, _ctf(n, device), PIX)
    img = img + noise_sd * torch.randn(img.shape, generator=g, dtype=torch.float64).to(device)
    return fft2_centered(img)


def _brute_force(images_ft, vft, rotations, shifts, sigma2, k_max, ctf):
    """Render every (image, rotation, shift) with forward_fourier (shift and CTF applied to the
    prediction; one batched call per image), then loop over the poses: the Gaussian log-likelihood
    written out from its definition with shells from numpy, softmax over the grid with a uniform
    prior. Returns (weights (B, M, T), log-evidence (B,)), float64."""
    b, m, t = images_ft.shape[0], rotations.shape[0], shifts.shape[0]
    i = np.arange(D) - D // 2
    shell = np.rint(np.hypot(i[None, :], i[:, None])).astype(int)  # [y, x]
    inside = torch.as_tensor(shell <= k_max, device=images_ft.device)
    inv2s2 = (1.0 / (2.0 * sigma2[torch.as_tensor(np.minimum(shell, D // 2), device=images_ft.device)]))
    ll = torch.empty(b, m, t, dtype=torch.float64)
    for bi in range(b):
        ctf_b = ctf[torch.full((m * t,), bi, dtype=torch.long)]
        preds = forward_fourier(vft, rotations.repeat_interleave(t, 0), D, shifts.repeat(m, 1), ctf_b, PIX)
        for mi in range(m):
            for ti in range(t):
                r2 = (images_ft[bi] - preds[mi * t + ti]).abs() ** 2
                ll[bi, mi, ti] = -(r2 * inv2s2)[inside].sum()
    logp = ll - math.log(m * t)
    lse = torch.logsumexp(logp.reshape(b, -1), dim=1)
    return torch.exp(logp - lse[:, None, None]), lse


def test_posterior_equals_brute_force(device):
    """pose_posterior (chunked, expanded likelihood, shifts as ramps on the image) reproduces a
    brute-force float64 posterior over 72 rotations × 9 shifts to 1e-6 relative, weights and
    log-evidence, with a CTF, coloured σ² and a frequency limit."""
    images = _noisy_images(3, device, noise_sd=0.3)
    vft = blob_volume_ft(D, dtype=torch.float64).to(device)
    rots = so3_grid(0, device=device, dtype=torch.float64)
    shifts = translation_grid(1.0, 1.0, device=device, dtype=torch.float64)
    k = torch.arange(D // 2 + 1, dtype=torch.float64, device=device)
    sigma2 = (0.3**2 * D * D) * (1 + 0.5 * k) * 40.0  # tempered: a broad posterior, many poses weigh
    k_max = 5
    ctf = _ctf(3, device)
    want_w, want_lse = _brute_force(images, vft, rots, shifts, sigma2, k_max, ctf)
    post = pose_posterior(images, vft, rots, shifts, sigma2, ctf=ctf, pixel_size=PIX, k_max=k_max,
                          mass=1.0, max_significant=72 * 9, rotation_chunk=10)
    got_w = post.dense(72, 9).cpu()
    assert (want_w > 1e-3).sum(dim=(1, 2)).min() >= 5, "test posterior should not be one-hot"
    torch.testing.assert_close(got_w, want_w, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(post.log_evidence.cpu(), want_lse, rtol=1e-6, atol=0)
    flat = want_w.reshape(3, -1).argmax(1)
    assert post.map_rotation_index.cpu().tolist() == (flat // 9).tolist()
    assert post.map_shift_index.cpu().tolist() == (flat % 9).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_equals_unchunked(device, dtype):
    """Processing rotations in chunks (of 37, not dividing 576) with a running log-sum-exp and a running
    top-K gives the same evidence, significant set and weights as one chunk of all rotations."""
    images = _noisy_images(4, device, noise_sd=0.5, seed=1).to(torch.complex64 if dtype == torch.float32
                                                               else torch.complex128)
    vft = blob_volume_ft(D, seed=1, dtype=dtype).to(device)
    rots = so3_grid(1, device=device, dtype=dtype)
    shifts = translation_grid(1.0, 1.0, device=device, dtype=dtype)
    sigma2 = torch.full((D // 2 + 1,), 4 * 0.5**2 * D * D, dtype=dtype, device=device)
    kw = dict(ctf=_ctf(4, device, dtype), pixel_size=PIX, k_max=6, mass=0.99, max_significant=60)
    a = pose_posterior(images, vft, rots, shifts, sigma2, rotation_chunk=37, **kw)
    b = pose_posterior(images, vft, rots, shifts, sigma2, rotation_chunk=576, **kw)
    # float32: matrix products over chunks of different widths round differently (~1e-4 in ℓ)
    tol = dict(rtol=1e-3, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(a.log_evidence, b.log_evidence, **tol)
    torch.testing.assert_close(a.dense(576, 9), b.dense(576, 9), **tol)
    if dtype == torch.float64:
        assert torch.equal(a.count, b.count)


def test_significant_weights_hold_the_requested_mass():
    """The significant set holds ≥ the requested fraction of the posterior mass, is the smallest such
    set (without its last pose it holds less), consists of the largest weights of the unpruned
    posterior, and never exceeds max_significant."""
    images = _noisy_images(4, "cpu", noise_sd=0.5, seed=2)
    vft = blob_volume_ft(D, seed=2, dtype=torch.float64)
    rots = so3_grid(0, dtype=torch.float64)
    shifts = translation_grid(2.0, 1.0, dtype=torch.float64)
    sigma2 = torch.full((D // 2 + 1,), 60 * 0.5**2 * D * D, dtype=torch.float64)  # tempered: broad
    kw = dict(ctf=_ctf(4, "cpu"), pixel_size=PIX, k_max=6)
    full = pose_posterior(images, vft, rots, shifts, sigma2, mass=1.0, max_significant=72 * 25, **kw)
    dense = full.dense(72, 25).reshape(4, -1)
    torch.testing.assert_close(dense.sum(1), torch.ones(4, dtype=torch.float64))
    ranked = dense.sort(dim=1, descending=True).values
    for mass in (0.5, 0.9, 0.999):
        post = pose_posterior(images, vft, rots, shifts, sigma2, mass=mass, max_significant=72 * 25, **kw)
        assert (post.kept_mass >= mass).all()
        for i in range(4):
            n = int(post.count[i])
            assert 1 <= n < 72 * 25
            assert float(ranked[i, :n - 1].sum()) < mass  # minimal
            torch.testing.assert_close(post.weight[i, :n], ranked[i, :n])
            assert (post.weight[i, n:] == 0).all() and (post.rotation_index[i, n:] == -1).all()
        assert int(post.count.min()) > 1  # a real choice of set size for every image
    capped = pose_posterior(images, vft, rots, shifts, sigma2, mass=0.999, max_significant=3, **kw)
    assert capped.weight.shape[1] == 3 and (capped.count <= 3).all()


def test_map_shift_of_a_grid_shifted_image_is_that_shift(device):
    """An image of a grid rotation shifted by a grid shift (particle centre at +x, +y: asymmetric
    values, so a sign or x/y swap would pick another shift) has that rotation and shift as its MAP —
    also with a grid per image, centred on a per-image offset."""
    vft = blob_volume_ft(D, seed=3).to(device)
    rots = so3_grid(0, device=device)
    shifts = translation_grid(2.0, 1.0, device=device)
    true_t = torch.tensor([3, 9, 14, 16, 23, 12])  # (x, y) = (1,-2) (2,-1) (2,0) (-1,1) (1,2) (0,0)
    true_r = torch.tensor([5, 40, 17, 63, 0, 33])
    ctf = _ctf(6, device, torch.float32)
    sigma2 = torch.full((D // 2 + 1,), 1.0, device=device)
    images = forward_fourier(vft, rots[true_r], D, shifts[true_t.to(device)], ctf, PIX)
    post = pose_posterior(images, vft, rots, shifts, sigma2, ctf=ctf, pixel_size=PIX, max_significant=5)
    assert post.map_shift_index.cpu().tolist() == true_t.tolist()
    assert post.map_rotation_index.cpu().tolist() == true_r.tolist()
    r_map, t_map = post.map_pose(rots, shifts)
    assert torch.equal(r_map, rots[true_r]) and torch.equal(t_map, shifts[true_t.to(device)])
    # per-image grids around offsets (RELION centres each image's grid on its previous shift)
    offsets = torch.tensor([[0.5, -1.5], [-2.0, 0.25], [1.0, 1.0], [0.0, 0.0], [-0.5, 0.5], [3.0, -2.0]],
                           device=device)
    grids = shifts[None] + offsets[:, None]  # (B, T, 2)
    true_shift = grids[torch.arange(6), true_t.to(device)]
    images = forward_fourier(vft, rots[true_r], D, true_shift, ctf, PIX)
    post = pose_posterior(images, vft, rots, grids, sigma2, ctf=ctf, pixel_size=PIX, max_significant=5)
    assert post.map_shift_index.cpu().tolist() == true_t.tolist()
    torch.testing.assert_close(post.map_pose(rots, grids)[1], true_shift)


def test_translation_grid():
    """The square grid holds the (2n+1)² multiples of the step with (x, y) ordered x fastest; the
    circular one keeps exactly those within the radius."""
    g = translation_grid(2.0, 1.0)
    assert g.shape == (25, 2)
    assert g[0].tolist() == [-2.0, -2.0] and g[1].tolist() == [-1.0, -2.0] and g[12].tolist() == [0.0, 0.0]
    c = translation_grid(2.0, 1.0, circular=True)
    assert c.shape == (13, 2) and bool((c.norm(dim=1) <= 2.0).all())


def test_streaming_top_equals_one_sort_of_the_whole_table():
    """estep.StreamingTop over chunks of a (B, X) log-weight table keeps exactly the top-k of one sort of
    the whole table, with their labels, and the log-sum-exp of every entry; estep.significant keeps the
    smallest prefix holding the mass."""
    from cryolens.inference.estep import StreamingTop, significant

    g = torch.Generator().manual_seed(4)
    table = torch.randn(3, 50, generator=g, dtype=torch.float64) * 3
    top = StreamingTop(3, 7, 1, dtype=torch.float64)
    for a in range(0, 50, 12):
        top.add(table[:, a:a + 12], lambda i, a=a: (a + i,))
    v, (idx,) = top.sorted()
    want_v, want_i = table.sort(1, descending=True)
    torch.testing.assert_close(v, want_v[:, :7], rtol=0, atol=0)
    assert torch.equal(idx, want_i[:, :7])
    torch.testing.assert_close(top.lse[:, 0], torch.logsumexp(table, 1))
    w, keep = significant(v, top.lse[:, 0], 0.5, 7)
    p = torch.softmax(table, 1).sort(1, descending=True).values
    for b in range(3):
        n = int(keep[b].sum())
        assert p[b, :n - 1].sum() < 0.5 and (n == 7 or p[b, :n].sum() >= 0.5)
        torch.testing.assert_close(w[b, :n], p[b, :n])

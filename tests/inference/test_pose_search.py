"""Modal pose search: the exhaustive grid search against brute force, the hierarchical search against
the exhaustive one on the finest grid, and recovery of off-grid poses."""

import math

import pytest
import torch

from cryolens.imaging.ctf import CTFParams
from cryolens.imaging.forward import forward_fourier
from cryolens.imaging.rotations import geodesic_distance, random_rotations
from cryolens.imaging.slice import extract_slices
from cryolens.imaging.so3_grid import angular_step, grid_size, so3_grid
from cryolens.inference.likelihood import gaussian_log_likelihood
from cryolens.inference.pose_search import frequency_schedule, grid_search, hierarchical_search
from cryolens.inference.posterior import translation_grid

from _inference_data import blob_volume_ft

PIX = 3.0


def test_grid_search_finds_the_brute_force_optimum():
    """grid_search's top rotations (each with its best shift) are the best rotations of a brute-force
    table built with forward_fourier and the direct log-likelihood, in the same order."""
    d = 16
    g = torch.Generator().manual_seed(5)
    vft = blob_volume_ft(d, seed=5, dtype=torch.float64)
    rots = so3_grid(0, dtype=torch.float64)
    shifts = translation_grid(1.0, 1.0, dtype=torch.float64)
    r_true = random_rotations(2, generator=g, dtype=torch.float64)
    images = forward_fourier(vft, r_true, d, torch.tensor([[0.3, -0.6], [-0.8, 0.2]], dtype=torch.float64))
    images = images + 30 * torch.randn(images.shape, generator=g, dtype=torch.complex128)
    sigma2 = torch.full((d // 2 + 1,), 900.0, dtype=torch.float64)
    idx, t_idx, score = grid_search(images, vft, rots, shifts, sigma2=sigma2, k_max=6, top_k=4, rotation_chunk=10)
    m, t = rots.shape[0], shifts.shape[0]
    preds = forward_fourier(vft, rots.repeat_interleave(t, 0), d, shifts.repeat(m, 1))
    table = gaussian_log_likelihood(images, preds[None].expand(2, -1, -1, -1), sigma2, 6).reshape(2, m, t)
    best_v, best_t = table.max(dim=2)
    want_v, want_r = best_v.topk(4, dim=1)
    assert idx.tolist() == want_r.tolist()
    assert t_idx.tolist() == best_t.gather(1, want_r).tolist()
    torch.testing.assert_close(score, want_v, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("size,shift_step", [(16, 0.5), (24, 1.0)])
def test_hierarchical_equals_exhaustive_on_grid_poses(device, size, shift_step):
    """Noiseless images rendered exactly at finest-grid poses (level 3 rotations, shifts on the finest
    shift lattice): the coarse-to-fine search from level 2 (4 608 rotations, keep 8) returns the same
    rotation and shift as the exhaustive search over all 36 864 × T finest poses — which is the true
    pose."""
    g = torch.Generator().manual_seed(6)
    vft = blob_volume_ft(size, seed=6).to(device)
    n, level = 8, 3
    fine_shifts = translation_grid(1.0, shift_step / 2, device=device)
    r_idx = torch.randint(grid_size(level), (n,), generator=g).to(device)
    t_idx = torch.randint(fine_shifts.shape[0], (n,), generator=g).to(device)
    images = forward_fourier(vft, so3_grid(level, indices=r_idx), size, fine_shifts[t_idx])
    ks = frequency_schedule(size, 1)
    res = hierarchical_search(images, vft, base_level=2, n_levels=1, max_shift=1.0, shift_step=shift_step,
                              keep=8, k_max=ks)
    ex_r, ex_t, _ = grid_search(images, vft, so3_grid(level, device=device), fine_shifts, k_max=ks[-1])
    assert ex_r[:, 0].tolist() == r_idx.tolist() and ex_t[:, 0].tolist() == t_idx.tolist()
    assert res.level == level
    assert res.grid_index.tolist() == ex_r[:, 0].tolist()
    torch.testing.assert_close(res.shifts, fine_shifts[ex_t[:, 0]])


def test_hierarchical_recovers_off_grid_poses_with_ctf(device):
    """Noiseless CTF-modulated images at random (off-grid) rotations and sub-pixel shifts: two levels
    of refinement from level 2 (to 3.75°) find every rotation within 1.5 finest steps of the truth
    and every shift within one finest shift step; the slices come from a plain callable, as any volume
    representation would give them. (The nearest grid point is up to 0.87 steps away, but the best-
    scoring one can be farther: over 120 such images at most 1.36 steps with keep = 16.)"""
    d, n = 16, 12
    g = torch.Generator().manual_seed(7)
    vft = blob_volume_ft(d, seed=7).to(device)
    r_true = random_rotations(n, generator=g).to(device)
    t_true = ((torch.rand(n, 2, generator=g) - 0.5) * 3).to(device)
    ctf = CTFParams.create(torch.linspace(9000, 18000, n), defocus_angle=0.3, device=device)
    images = forward_fourier(vft, r_true, d, t_true, ctf, PIX)

    def slices(rotations):
        return extract_slices(vft, rotations, d, hermitian=True)

    res = hierarchical_search(images, slices, ctf=ctf, pixel_size=PIX, base_level=2, n_levels=2,
                              max_shift=2.0, shift_step=1.0, keep=16, image_chunk=5)
    step = angular_step(res.level)
    assert step == pytest.approx(3.75)
    err = torch.rad2deg(geodesic_distance(res.rotations.double(), r_true.double()))
    assert float(err.max()) < 1.5 * step, err
    assert float((res.shifts - t_true).abs().max()) <= res.shift_step
    assert res.rotations.shape == (n, 3, 3) and res.scores.shape == (n,)
    torch.testing.assert_close(res.rotations, so3_grid(res.level, indices=res.grid_index))


def test_frequency_schedule_marches_up():
    """The shell limit rises linearly from k_start to k_end over the levels."""
    assert frequency_schedule(64, 3, 8, 32) == [8, 16, 24, 32]
    assert frequency_schedule(16, 2) == [4, 6, 8]
    assert frequency_schedule(16, 0) == [8]
    assert math.isclose(angular_step(2), 15.0)


def test_hierarchical_shifts_stay_in_range():
    """Refined shifts never leave the searched square ±max_shift, even when the particle sits outside
    it (here at x = +3 px with max_shift = 1 px: the best in-range shift is the edge, x = +1)."""
    d = 16
    vft = blob_volume_ft(d, seed=8)
    r = so3_grid(2, indices=torch.tensor([100, 2000, 3000]))
    images = forward_fourier(vft, r, d, torch.tensor([[3.0, 0.0], [3.0, -0.5], [-3.0, 0.5]]))
    res = hierarchical_search(images, vft, base_level=2, n_levels=2, max_shift=1.0, shift_step=0.5, keep=8)
    assert float(res.shifts.abs().max()) <= 1.0
    assert res.shifts[:, 0].tolist() == [1.0, 1.0, -1.0]


def test_refinement_split_into_small_calls_gives_the_same_poses(monkeypatch):
    """On a CPU the refinement levels run a few images per call (a memory bound, see
    ``_refine_images_per_call``): with the bound forcing one image per call and with it large enough for
    all 12 at once, the rotations, shifts and scores are identical."""
    import cryolens.inference.pose_search as ps

    d, n = 16, 12
    g = torch.Generator().manual_seed(11)
    vft = blob_volume_ft(d, seed=11)
    images = forward_fourier(vft, random_rotations(n, generator=g), d, (torch.rand(n, 2, generator=g) - 0.5) * 2)
    runs = {}
    for name, budget in (("one", 1), ("all", 1 << 40)):
        monkeypatch.setattr(ps, "REFINE_CPU_BYTES", budget)
        assert ps._refine_images_per_call(n, 8, 2, 8, torch.device("cpu")) == (1 if name == "one" else n)
        runs[name] = hierarchical_search(images, vft, base_level=1, n_levels=2, max_shift=1.0, keep=8)
    assert runs["one"].grid_index.tolist() == runs["all"].grid_index.tolist()
    assert torch.equal(runs["one"].shifts, runs["all"].shifts)
    torch.testing.assert_close(runs["one"].scores, runs["all"].scores)

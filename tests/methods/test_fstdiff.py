"""The fstdiff recipe: with a vanishing posterior variance, known poses and the noise and prior held fixed, its
mean is the MAP reconstruction of the same image model solved independently (written out by hand, conjugate
gradients, float64); through ``cryolens train fstdiff`` a tiny run
writes the mean map, the std map, and per-image spreads in the STAR."""

import json

import numpy as np
import torch

from cryolens.imaging.ctf import ctf_2d
from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.fft import ifft3_centered
from cryolens.imaging.grids import freq_grid_2d, freq_grid_3d, shell_index_3d, spherical_mask
from cryolens.inference.likelihood import shell_weights
from cryolens.imaging.shift import phase_shift
from cryolens.io.dataset import read_images
from cryolens.io.runfolder import RunFolder
from cryolens.methods import Known, get
from cryolens.volumes.neural import canonical_half
from cryolens.volumes.variational import hermitian_complete, trilinear_apodisation
from cryolens.volumes.voxel import sample_fourier

from _drgn_data import blob_dataset


def _exact_map(particles, sigma2: torch.Tensor, tau2: torch.Tensor) -> torch.Tensor:
    """The MAP grid (D, D, D) complex128 of the trilinear Fourier-slice model, written out by hand and solved
    by conjugate gradients in float64: argmin Σ_i Σ_f |Y − C·ramp·P_R V|² / (2σ²) + Σ |V|² / (2τ²) over the
    free coefficients (real, imaginary; the DC one real)."""
    d = particles.box_size
    f3 = freq_grid_3d(d, dtype=torch.float64)
    free = canonical_half(f3) & (f3.norm(dim=-1) < 0.5)
    dc = f3.norm(dim=-1) == 0
    images = read_images(particles, np.arange(len(particles))).double()
    y = fft2_centered(images)
    ctf = ctf_2d(particles.ctf, d, particles.pixel_size, dtype=torch.float64)
    ramp = phase_shift(torch.ones_like(y), particles.shifts.double())
    plane = freq_grid_2d(d, dtype=torch.float64).reshape(-1, 2)
    plane = torch.cat([plane, torch.zeros(d * d, 1, dtype=torch.float64)], 1)
    coords = torch.einsum("bij,mj->bmi", particles.rotations.double(), plane)
    w = shell_weights(sigma2, d, d // 2 - 1)
    prior = tau2[shell_index_3d(d).clamp_max(d // 2)][free]
    n_free = int(free.sum())

    def objective(x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(d, d, d, dtype=torch.complex128)
        grid[free] = torch.complex(x[:n_free], x[n_free:] * ~dc[free])
        grid = hermitian_complete(grid, free)
        pred = ctf * ramp * sample_fourier(grid, coords).reshape(-1, d, d)
        return (w * (y - pred).abs().square()).sum() + (x.square() / (2 * torch.cat([prior, prior]))).sum()

    def grad(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(objective(x), x)[0]

    zero = torch.zeros(2 * n_free, dtype=torch.float64)
    g0 = grad(zero)
    x, r = zero.clone(), -g0
    p, rr = r.clone(), float(r @ r)
    for _ in range(400):  # J is quadratic: H v = ∇J(v) − ∇J(0)
        hp = grad(p) - g0
        alpha = rr / float(p @ hp)
        x, r = x + alpha * p, r - alpha * hp
        rr_new = float(r @ r)
        if rr_new < 1e-24 * float(g0 @ g0):
            break
        p, rr = r + (rr_new / rr) * p, rr_new
    grid = torch.zeros(d, d, d, dtype=torch.complex128)
    grid[free] = torch.complex(x[:n_free], x[n_free:] * ~dc[free])
    return grid


def test_tiny_variance_reproduces_the_map_reconstruction(tmp_path):
    """30 noisy images (D = 8, CTF, known poses and shifts), log(s²/τ²) = −30 held there, σ² and τ² frozen:
    the recipe's mean map (Adam on the Monte Carlo ELBO, 120 steps of 10 images) is the MAP map of the same
    model solved exactly (:func:`_exact_map`, conjugate gradients) to 12 % inside the particle's sphere, and
    more than 3× closer to it than to the MAP under a 10× stronger prior (the test sees the prior). Outside
    the sphere the two differ more: Adam is slow on the near-null alternating modes of trilinear
    interpolation, which live at the box edges."""
    particles, _ = blob_dataset(tmp_path, 30, 8, noise=0.3)
    rec = get("fstdiff")
    cfg = rec.config({"pose": "known", "epochs": 40, "batch_size": 10, "lr": 0.2, "lr_decay": 0.9,
                      "init_logvar": -30.0, "var_lr": 1e-12, "learn_noise": False, "learn_prior": False,
                      "norm_images": 30, "std_samples": 2, "calibrate": False})
    out = rec.fit(particles, Known(), RunFolder(tmp_path / "run"), cfg, "cpu", False)
    sigma2 = torch.tensor(out.metrics["noise_power_per_shell"], dtype=torch.float64)
    tau2 = torch.tensor(out.metrics["prior_std_per_shell"], dtype=torch.float64).square()
    assert max(out.metrics["posterior_std_per_shell"]) < 1e-4 * float(tau2.sqrt().min())
    d = 8
    f = freq_grid_3d(d)
    free = canonical_half(f) & (f.norm(dim=-1) < 0.5)
    exact = _exact_map(particles, sigma2, tau2)
    wrong = _exact_map(particles, sigma2, tau2 / 10)
    mask = spherical_mask(d, radius=d / 2 - 1, width=1.0).double()
    mine = out.volume.double() * mask

    def rel(grid: torch.Tensor) -> float:
        ref = ifft3_centered(hermitian_complete(grid, free)).real * trilinear_apodisation(d) * mask
        return float((mine - ref).norm() / ref.norm())

    assert rel(exact) < 0.12
    assert rel(wrong) > 3 * rel(exact)


def test_cli_writes_mean_std_and_pose_spreads(tmp_path):
    """``cryolens train fstdiff`` (D = 16, 32 images, 2 epochs, per-image q(R, t) started at the metadata's
    poses): map.mrc and std.mrc (positive everywhere inside, D³), particles.star with the mean poses (proper
    rotations) and the per-image rotational and shift spreads (with ``pose_spread=learned`` and no Gauss-Newton
    step, which would set them by Laplace:
    rlnCryolensRotStdDeg near the 2° start; the Laplace default is tested in test_variational_laplace.py,
    rlnCryolensShiftStdPx > 0), per-shell posterior and prior std in metrics.json; the amortized variant runs
    through the same entry point."""
    from cryolens.cli.main import main
    from cryolens.io.mrc import read_volume
    from cryolens.io.star import read_star, write_star

    particles, _ = blob_dataset(tmp_path, 32, 16, noise=0.3)
    write_star(tmp_path / "particles.star", particles)
    sets = {"epochs": 2, "batch_size": 16, "norm_images": 32, "std_samples": 4, "pose_spread": "learned",
            "pose_newton_every": 0}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert main(["train", "fstdiff", str(tmp_path / "particles.star"), "--out", str(tmp_path / "run"), "--quiet",
                 "--device", "cpu", "--no-report", *args]) == 0
    run = tmp_path / "run"
    mean, _ = read_volume(run / "map.mrc")
    std, px = read_volume(run / "std.mrc")
    assert mean.shape == std.shape == (16, 16, 16) and px == particles.pixel_size
    assert float(std.min()) > 0
    star = read_star(run / "particles.star")
    torch.testing.assert_close(torch.linalg.det(star.rotations), torch.ones(32), atol=1e-4, rtol=0)
    spread = np.asarray(star.extra["rlnCryolensRotStdDeg"], dtype=float)
    assert spread.shape == (32,) and np.all((spread > 0.5 * 2 * np.sqrt(3)) & (spread < 2 * 2 * np.sqrt(3)))
    assert np.all(np.asarray(star.extra["rlnCryolensShiftStdPx"], dtype=float) > 0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["posterior_std_per_shell"]) == len(metrics["prior_std_per_shell"]) == 9

    out = get("fstdiff").fit(particles, Known(poses=False), RunFolder(tmp_path / "amortized"),
                             get("fstdiff").config({**sets, "epochs": 1, "pose": "amortized", "enc_channels": 4,
                                                    "enc_max_channels": 8, "enc_hidden": [16]}), "cpu", False)
    assert out.rotations.shape == (32, 3, 3) and out.particle_columns["rlnCryolensRotStdDeg"].shape == (32,)


def test_calibrate_draws_agree_with_the_closed_form(tmp_path):
    """``calibrate_draws=64`` (independent prior): the recipe's q(V) variances, read off exact posterior draws,
    agree per shell with the closed-form calibration (the stationary formula, itself tested against a dense
    inverse) to 15 %, the means are the same solve, and the std map comes from the draws (positive)."""
    particles, _ = blob_dataset(tmp_path, 40, 8, noise=0.3)
    rec = get("fstdiff")
    base = {"pose": "known", "epochs": 3, "batch_size": 10, "norm_images": 40, "std_samples": 2}
    closed = rec.fit(particles, Known(), RunFolder(tmp_path / "a"), rec.config(base), "cpu", False)
    drawn = rec.fit(particles, Known(), RunFolder(tmp_path / "b"), rec.config({**base, "calibrate_draws": 64}),
                    "cpu", False)
    a = np.asarray(closed.metrics["posterior_std_per_shell"])[1:4]
    b = np.asarray(drawn.metrics["posterior_std_per_shell"])[1:4]
    assert np.all(np.abs(b**2 / a**2 - 1) < 0.15), (a, b)
    torch.testing.assert_close(drawn.volume, closed.volume, rtol=0, atol=2e-3 * float(closed.volume.abs().max()))
    assert float(drawn.extra_volumes["std"].min()) > 0


def test_a_low_passed_start_map_does_not_cap_the_resolution(tmp_path):
    """A refinement's start map sets q(V)'s mean, not its prior: started from the true map low-passed to shell
    2, SGD at known poses grows the shells above it as a zero start does — the fraction of the truth's
    shell-4–6 power the map holds at least half the zero start's (a prior or step size read off the start
    map's power, ~0 there, pins those shells) and its FSC with the truth at shells 4–5 > 0.8."""
    from cryolens.imaging.fft import fft3_centered
    from cryolens.imaging.grids import radial_average
    from cryolens.io.mrc import write_volume
    from cryolens.metrics.fsc import fsc

    from _drgn_data import blob_volume

    particles, _ = blob_dataset(tmp_path, 200, 16, noise=0.05)
    truth = blob_volume(16, 0.0)
    shells = shell_index_3d(16).clamp_max(8)
    ft = fft3_centered(truth)
    write_volume(tmp_path / "start.mrc", ifft3_centered(ft * (shells <= 2)).real.numpy(), particles.pixel_size)
    rec = get("fstdiff")
    base = {"pose": "known", "epochs": 8, "batch_size": 20, "norm_images": 200, "std_samples": 2, "calibrate": False}

    def power_46(volume: torch.Tensor) -> float:
        p = radial_average(fft3_centered(volume.double()).abs().square(), shells, 9)
        return float(p[4:7].sum())

    zero = rec.fit(particles, Known(), RunFolder(tmp_path / "zero"), rec.config(base), "cpu", False)
    start = rec.fit(particles, Known(), RunFolder(tmp_path / "start"),
                    rec.config({**base, "init_map": str(tmp_path / "start.mrc")}), "cpu", False)
    ratio = power_46(start.volume) / power_46(zero.volume)
    assert ratio > 0.5, (ratio, power_46(zero.volume) / power_46(truth))
    assert float(fsc(start.volume, truth)[4:6].min()) > 0.8


def test_start_poses_search_starts_from_each_images_mode(tmp_path):
    """``start_poses=search`` (a refinement from a map alone): the pose table starts at each image's mode found
    by the hierarchical search against ``init_map`` — with the true map, 64 low-noise images of a 4-blob body
    whose poses the fit is not given end within 6° of the truth (median; the search's finest grid is 3.75°,
    random rotations are ~126° off) and the shifts within 0.5 px; without a start map it is refused."""
    import pytest

    from cryolens.errors import InputError
    from cryolens.io.mrc import write_volume
    from cryolens.metrics.pose_error import rotation_errors

    from _drgn_data import blob_volume

    particles, _ = blob_dataset(tmp_path, 64, 16, noise=0.02)
    write_volume(tmp_path / "truth.mrc", blob_volume(16, 0.0).numpy(), particles.pixel_size)
    rec = get("fstdiff")
    sets = {"epochs": 1, "batch_size": 16, "norm_images": 64, "std_samples": 2, "start_poses": "search",
            "init_map": str(tmp_path / "truth.mrc")}
    out = rec.fit(particles, Known(poses=False), RunFolder(tmp_path / "run"), rec.config(sets), "cpu", False)
    assert float(np.median(rotation_errors(out.rotations, particles.rotations))) < 6.0
    assert float((out.shifts - particles.shifts).norm(dim=-1).median()) < 0.5
    with pytest.raises(InputError, match="init_map"):
        rec.fit(particles, Known(poses=False), RunFolder(tmp_path / "none"),
                rec.config({**sets, "init_map": None}), "cpu", False)


def test_a_start_search_schedules_later_searches_unless_told():
    """After ``start_poses=search`` the searches run again after 30 % and 60 % of the epochs unless
    ``pose_search_epochs`` says otherwise (``[0]``: none); a refinement from given poses searches only when
    told."""
    from cryolens.inference.variational_setup import pose_strategies, search_epochs

    rec = get("fstdiff")
    assert search_epochs(rec.config({"start_poses": "search", "epochs": 20})) == (6, 12)
    assert search_epochs(rec.config({"start_poses": "search", "epochs": 30})) == (9, 18)
    assert search_epochs(rec.config({"start_poses": "search", "pose_search_epochs": [4]})) == (4,)
    assert search_epochs(rec.config({"start_poses": "search", "pose_search_epochs": [0]})) == ()
    assert search_epochs(rec.config({"start_poses": "metadata"})) == ()
    steps = pose_strategies(rec.config({"start_poses": "search", "epochs": 20, "pose_newton_every": 0}))
    assert len(steps) == 1 and steps[0].search_epochs == (6, 12) and steps[0].newton_every == 0
    assert pose_strategies(rec.config({"start_poses": "search", "pose_search_epochs": [0],
                                       "pose_newton_every": 0})) == []

"""The pose diagnostic of auto-refine (inference/pose_accuracy.py, oversampling.window_diagnostic): crossing,
window mass and RMS angle against hand computations; the expected angular accuracy against a float64
full-plane sum of the likelihood drop and its 1/√SNR law."""

import math

import pytest
import torch

from cryolens.imaging.grids import lowpass_volume
from cryolens.imaging.rotations import random_rotations, rotvec_to_matrix
from cryolens.inference.likelihood import shell_weights
from cryolens.inference.oversampling import Reference, Stage, window_diagnostic
from cryolens.imaging.so3_grid import local_grid
from cryolens.inference.pose_accuracy import (expected_angular_accuracy, first_crossing, grid_points_within,
                                              posterior_rms_angle, significant_caps,
                                              trial_angles, window_mass)


def test_first_crossing_by_hand():
    """Rows: crossing between rungs 2 and 4 (drop 0.6 → 1.4: halfway, 3.0); first rung already above (from
    0 at angle 0: 1/2.5 of the way to 1, 0.4); never above (the last rung, 4)."""
    angles = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    drop = torch.tensor([[0.2, 0.6, 1.4], [2.5, 3.0, 9.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    assert first_crossing(angles, drop).tolist() == pytest.approx([3.0, 0.4, 4.0], rel=1e-12)


def test_window_mass_and_rms_angle_by_hand():
    """Weights 1/4, 3/4, 0 (log-likelihoods 0, log 3, −inf); only the first candidate (angle 0.1) is within
    radius 0.3: mass 1/4. Rotations about z by 0, 0.1, 0.3 rad with weights 1/4, 1/2, 1/4: the mode is the
    0.1 one, the angles to it 0.1, 0, 0.2: RMS √(0.25·0.01 + 0.25·0.04)."""
    ll = torch.tensor([[0.0, math.log(3.0), -math.inf]], dtype=torch.float64)
    ang = torch.tensor([[0.1, 0.5, 0.2]], dtype=torch.float64)
    assert window_mass(ll, ang, 0.3).tolist() == pytest.approx([0.25], rel=1e-12)
    rots = rotvec_to_matrix(torch.tensor([[0, 0, 0.0], [0, 0, 0.1], [0, 0, 0.3]], dtype=torch.float64))[None]
    ll2 = torch.log(torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64))
    assert posterior_rms_angle(ll2, rots).tolist() == pytest.approx([math.sqrt(0.25 * 0.01 + 0.25 * 0.04)], rel=1e-9)


@pytest.fixture(scope="module")
def blob():
    """A smooth random map (D = 16) prepared as an E-step reference, float64."""
    g = torch.Generator().manual_seed(0)
    vol = lowpass_volume(torch.randn(16, 16, 16, generator=g, dtype=torch.float64), 4.0, 1.0)
    return Reference(vol, 2, 8)


def _direct_drop(ref, rot, axis, angle_deg, ctf, sigma2, k):
    """Σ over the full plane of w·C²·|P_R − P_R'|², w = 1/(2σ²) on shells ≤ k (float64, full slices)."""
    turned = rot @ rotvec_to_matrix(axis * math.radians(angle_deg))
    d = ref.slicer(rot[None])[0] - ref.slicer(turned[None])[0]
    return float((shell_weights(sigma2, 16, k) * ctf.square() * d.abs().square()).sum())


def test_accuracy_is_where_the_full_plane_drop_reaches_one(blob):
    """On a fine ladder the accuracy δ₁ has a drop of 1 (±4 %: the two paths interpolate the map
    differently) by the independent full-plane sum along the same axis, and a clearly smaller one at
    0.8 δ₁; at small angles (σ² / 64) quadrupling σ² doubles δ₁ (drop ∝ δ²/σ²)."""
    rots = random_rotations(3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ctf = 0.3 + 0.7 * torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s2 = torch.linspace(2.0, 0.8, 9, dtype=torch.float64) * float(blob.slicer(rots).abs().square().mean())
    ladder = trial_angles(20.0, 400, 0.01)
    acc = expected_angular_accuracy(blob.slicer, blob.values, ctf, s2, rots, 8, ladder,
                                    torch.Generator().manual_seed(5))
    axes = torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    axes = axes / axes.norm(dim=1, keepdim=True)
    for i in range(3):
        assert 0.05 < float(acc[i]) < 19.0
        assert _direct_drop(blob, rots[i], axes[i], float(acc[i]), ctf[i], s2, 8) == pytest.approx(1.0, rel=0.04)
        assert _direct_drop(blob, rots[i], axes[i], 0.8 * float(acc[i]), ctf[i], s2, 8) < 0.75
    small, four = (expected_angular_accuracy(blob.slicer, blob.values, ctf, f * s2, rots, 8, ladder,
                                             torch.Generator().manual_seed(5)) for f in (1 / 64, 4 / 64))
    assert (four / small).tolist() == pytest.approx([2.0] * 3, rel=0.03)


def test_window_diagnostic_counts_mass_outside_a_narrow_window(blob):
    """Noise-free images at known poses, the window centred 1.5 steps away from the truth: a window of
    radius 0.5 step holds little of the posterior (its mode is at the truth, outside), one of 4 steps holds
    nearly all of it. The noise is tiny, so the posterior sits on the grid point nearest the truth: RMS
    angle about the mode below a tenth of a step."""
    g = torch.Generator().manual_seed(3)
    rots = random_rotations(4, generator=g, dtype=torch.float64)
    y = blob.slicer(rots)
    s2 = torch.full((9,), 1e-4, dtype=torch.float64) * float(y.abs().square().mean())
    step = math.radians(15.0)
    off = rots @ rotvec_to_matrix(torch.tensor([0.0, 0.0, 1.5 * step], dtype=torch.float64).expand(4, 3))
    shift = torch.zeros(4, 2, dtype=torch.float64)
    common = {"order": 2, "k_max": 8, "offset_range": 0.0, "offset_step": 1.0, "local": True, "size": 16}
    narrow, rms = window_diagnostic(y, None, s2, blob, Stage(local_range_rad=0.5 * step, **common), off, shift,
                                    widen=8.0)
    wide, _ = window_diagnostic(y, None, s2, blob, Stage(local_range_rad=4 * step, **common), off, shift)
    assert float(narrow.max()) < 0.2 and float(wide.min()) > 0.95
    assert float(rms.max()) < 1.5


def test_grid_points_within_matches_counted_local_grids():
    """The Haar-measure count against the grid points :func:`local_grid` finds within 20° of 30 random
    rotations (level 3, 7.5° step): the mean count within 5 %; the caps follow it (×2 coarse, ×4 last,
    at least the configured caps, at most 8 × them and the limits)."""
    rots = random_rotations(30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    bat, _ = local_grid(rots, 3, math.radians(20.0))
    counted = bat.numel() / 30
    assert grid_points_within(3, math.radians(20.0)) == pytest.approx(counted, rel=0.05)
    n3, n4 = (grid_points_within(level, math.radians(20.0)) for level in (3, 4))
    assert significant_caps(10.0, 3, 128, 512, 10_000, 100_000) == (math.ceil(2 * n3), math.ceil(4 * n4))
    assert significant_caps(10.0, 3, 16, 48, 64, 10_000) == (64, 384)
    assert significant_caps(0.1, 3, 16, 48) == (16, 48)


def test_weighted_residual_power_equals_pair_by_pair_sum(blob):
    """σ²'s posterior-weighted statistic from the per-rotation sums equals, shell by shell (≤ k_max), the
    float64 sum over the pairs of w·|Y' − C·P_R|² with each pair's shift undone (full plane)."""
    from cryolens.imaging.fft import fft2_centered
    from cryolens.imaging.grids import shell_index_2d, shell_sum
    from cryolens.imaging.shift import phase_shift
    from cryolens.imaging.slice import extract_points_from_sampling_volume
    from cryolens.imaging.so3_grid import so3_grid
    from cryolens.inference.mstep import InsertPixels, insert_pairs_on_pixels, weighted_residual_power
    from cryolens.inference.reconstruct import FourierAccumulator

    g = torch.Generator().manual_seed(6)
    y = fft2_centered(torch.randn(3, 16, 16, generator=g, dtype=torch.float64))  # real images: Friedel pairs
    ctf = blob.slicer(random_rotations(3, generator=g, dtype=torch.float64)).abs()  # a Friedel-symmetric CTF
    image = torch.tensor([0, 0, 1, 1, 1, 2])
    grid = torch.tensor([5, 9, 5, 40, 77, 9])
    shift = torch.randn(6, 2, generator=g, dtype=torch.float64)
    weight = torch.tensor([0.7, 0.3, 0.2, 0.5, 0.3, 1.0], dtype=torch.float64)
    where = InsertPixels(16, 6, "cpu", torch.float64)
    acc = FourierAccumulator(16, 2, "cpu", torch.float64)
    sums = insert_pairs_on_pixels(acc, y, ctf, image, grid, shift, weight,
                                  lambda used: so3_grid(1, dtype=torch.float64, indices=used), where)
    every = torch.arange(256)
    power = weighted_residual_power(
        y, *sums, lambda r, p: extract_points_from_sampling_volume(blob.sv, r, 16, p), where)
    direct = torch.zeros(16, 16, dtype=torch.float64)
    for i, m, t, w in zip(image, grid, shift, weight):
        p = extract_points_from_sampling_volume(blob.sv, so3_grid(1, dtype=torch.float64, indices=m[None]), 16,
                                                every).reshape(16, 16)
        direct += w * (phase_shift(y[i][None], -t[None])[0] - ctf[i] * p).abs().square()
    shells = shell_index_2d(16)
    inside = torch.where(shells <= 6, direct, torch.zeros_like(direct))
    assert shell_sum(power, shells, 9)[:7].tolist() == pytest.approx(shell_sum(inside, shells, 9)[:7].tolist(),
                                                                      rel=1e-9)
    assert float(power[shells > 6].abs().sum()) == 0.0


class _FixedDiag:
    """A PoseDiagnostics stand-in reporting a given accuracy."""

    def __init__(self, acc: float):
        self.acc = acc

    def summary(self) -> dict:
        return {"accuracy_deg": self.acc, "window_mass_mean": float("nan"), "window_mass_min": float("nan"),
                "window_rms_deg": float("nan")}


def _schedule_at_order4(acc: float, best_shell: float, change_deg: float, cfg, earlier=()):
    """``_schedule`` after an iteration at order 4 (oversampled step 1.875°, 4 images, box 16) whose FSC gives
    shell 8, with accuracy ``acc``, the previous best shell ``best_shell`` and median pose change ``change_deg``;
    ``earlier``: the median pose changes of the iterations before it."""
    from cryolens.inference import autorefine as A
    from cryolens.inference.refine_schedule import next_schedule
    from cryolens.inference.refine_state import RefineState

    n, size = 4, 16
    state = RefineState(iteration=3, volumes=[], full=torch.zeros(1), sigma2=[], rotations=torch.eye(3).repeat(n, 1, 1),
                        shifts=torch.zeros(n, 2), half=torch.tensor([0, 1, 0, 1]), order=4, refinements=2, no_gain=0,
                        best_shell=best_shell, k_max=12, converged=False, fsc=torch.zeros(9), resolution=4.0,
                        history=[{"median_pose_change_deg": c} for c in earlier], config={}, accuracy_deg=acc)
    stage = A._stage(4, 12, 2, cfg, size, 1.0, acc)
    tally = A._Tally(state.rotations, state.shifts, torch.full((n,), change_deg, dtype=torch.float64),
                     torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64),
                     torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.float64), _FixedDiag(acc))
    stage.caps = (16, 48)
    maps = {"resolution": 2.0, "curve": [0.0] * 9, "sigma2": [torch.ones(9)], "tau2": torch.ones(9)}  # shell 8
    return next_schedule(state, stage, maps, tally, cfg, size, 1.0)


@pytest.mark.parametrize("acc, follow, refines", [(3.0, True, False), (2.0, True, True), (3.0, False, True)])
def test_stall_refines_only_while_the_step_is_not_below_three_quarters_of_the_accuracy(acc, follow, refines):
    """A stalled iteration at order 4 (oversampled step 1.875°): with the accuracy followed it refines to
    order 5 only when 1.875 ≥ 0.75 × accuracy (2.0°: 1.5, refines; 3.0°: 2.25, converges instead), as it
    always did without; the local prior σ is the step (3.75°) widened to the accuracy, at most twice the step."""
    from cryolens.inference.refine_diag import local_sigma_deg
    from cryolens.inference.refine_state import RefineConfig

    cfg = RefineConfig(follow_accuracy=follow)
    out = _schedule_at_order4(acc, 8.0, 0.1, cfg)  # no gain, small pose changes: a stall
    assert out["history"][-1]["stalled"]
    assert (out["order"], out["converged"]) == ((5, False) if refines else (4, True))
    assert local_sigma_deg(4, acc, cfg) == pytest.approx(max(3.75, acc) if follow else 3.75)
    assert local_sigma_deg(4, 9.0, RefineConfig()) == pytest.approx(7.5)


@pytest.mark.parametrize("acc, order_after", [(1.5, 5), (2.5, 4)])
def test_a_grid_coarser_than_the_accuracy_refines_without_a_stall(acc, order_after):
    """An iteration at order 4 (oversampled step 1.875°) that *gained* resolution (no stall): a measured
    accuracy below the step (1.5°: neighbouring grid points differ by more than one unit of expected
    log-likelihood) refines to order 5 at once; 2.5° (above the step) keeps order 4."""
    from cryolens.inference.refine_state import RefineConfig

    out = _schedule_at_order4(acc, 6.0, 5.0, RefineConfig())  # +2 shells, large pose changes: no stall
    h = out["history"][-1]
    assert not h["stalled"] and h["grid_coarser_than_accuracy"] == (acc < 1.875)
    assert (out["order"], out["refinements"], out["converged"]) == (order_after, 2 + (order_after - 4), False)


@pytest.mark.parametrize("earlier, converges", [((), True), ((5.0, 0.5), False), ((5.0, 0.1), True),
                                                ((math.inf, 0.103), True), ((math.inf, 0.104), False)])
def test_a_stall_converges_only_once_the_pose_changes_stop_shrinking(earlier, converges):
    """A stall that cannot refine (oversampled step 1.875° < 0.75 × the 3° accuracy: fine enough) converges
    only when this iteration's median pose change (0.1°) is at least 0.97 × the smallest earlier one (RELION's
    criterion): after 0.5° the poses still converge (0.1 < 0.485), after 0.1° they have stopped; the
    threshold 0.1 / 0.97 = 0.10309 lies between 0.103 and 0.104; no earlier change: converges as before."""
    from cryolens.inference.refine_schedule import changes_still_shrinking
    from cryolens.inference.refine_state import RefineConfig

    out = _schedule_at_order4(3.0, 8.0, 0.1, RefineConfig(), earlier)
    assert out["history"][-1]["stalled"] and out["history"][-1]["fine_enough"]
    assert (out["order"], out["converged"], out["history"][-1]["changes_shrinking"]) == (4, converges, not converges)
    assert changes_still_shrinking([{"median_pose_change_deg": math.inf}], 0.1) is False
    assert changes_still_shrinking([{"median_pose_change_deg": 1.0}], math.nan) is False


@pytest.mark.parametrize("folds, top, change, converges", [(8, 4, 0.1, True), (8, 4, 3.5, False), (0, 4, 0.1, False),
                                                          (8, 5, 0.1, False)])
def test_with_fold_references_a_stall_converges_once_the_changes_are_within_the_accuracy(folds, top, change,
                                                                                         converges):
    """Changes still shrinking (earlier 5° then 4°): with fold references a stall at the finest level (order 4 =
    ``max_order``) converges when the median change is within the 3° accuracy (0.1°), not when above it (3.5°);
    without folds (RELION's references), or at a level that is fine enough but not the finest (``max_order`` 5),
    it waits for the changes to stop shrinking."""
    from cryolens.inference.refine_state import RefineConfig

    out = _schedule_at_order4(3.0, 8.0, change, RefineConfig(reference_folds=folds, max_order=top), (5.0, 4.0))
    h = out["history"][-1]
    assert h["stalled"] and h["changes_shrinking"] and out["order"] == 4
    assert (out["converged"], h["changes_within_accuracy"]) == (converges, converges)


def test_a_local_last_pass_keeps_every_significant_child():
    """The last pass's cap: max_significant in a global search; in a local one all 8 × 4 children of each
    coarse pose (16 → 512), so that a posterior wider than 48 pairs at a fine step is not truncated."""
    from cryolens.inference.pose_accuracy import last_pass_cap

    assert last_pass_cap(False, 16, 48) == 48
    assert last_pass_cap(True, 16, 48) == 16 * 8 * 4
    assert last_pass_cap(True, 2, 100) == 100


@pytest.mark.parametrize("noise, change, order_after", [(1e-6, 0.5, 4), (1e-6, 20.0, 2), (1e6, 0.5, 2)])
def test_look_ahead_refines_before_an_estep_whose_posteriors_would_sit_on_one_grid_point(tmp_path, noise, change,
                                                                                        order_after):
    """Before iteration 2 (order 2, oversampled step 7.5°), the accuracy the E-step will have is measured on
    half 1's reference at the current poses: with σ² tiny it is far below every step and the state is refined
    up to ``max_order`` (4) before the E-step — but not into the local searches (``local_order`` 3) while the
    last median pose change (20°) says the poses have not settled; with σ² huge it is above 7.5° and order 2
    stays. The number is the mean of :func:`expected_angular_accuracy` over the same images, CTFs and axes."""
    from dataclasses import replace

    from cryolens.imaging.ctf import ctf_2d
    from cryolens.inference import autorefine as A
    from cryolens.io.atomic import read_atoms
    from cryolens.io.dataset import read_particles
    from cryolens.simulate import bundled_model
    from cryolens.simulate.dataset import simulate_dataset
    from cryolens.simulate.density import atoms_to_volume

    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), 16, 6.0)
    p = read_particles(simulate_dataset(tmp_path / "ds", vol, 12, 6.0, 1.0, seed=1, progress=False) / "particles.star")
    cfg = A.RefineConfig(healpix_order=2, local_order=3, max_order=4, accuracy_images=4, flatten_solvent=False)
    state = A._initial_state(p, vol, cfg, torch.device("cpu"))
    state = replace(state, iteration=1, sigma2=[s * noise for s in state.sigma2], rotations=p.rotations.clone(),
                    history=[{"median_pose_change_deg": change, "angular_step_deg": 7.5}])
    out, acc = A._look_ahead(p, state, cfg, torch.device("cpu"))
    idx = torch.nonzero(state.half == 0)[:4, 0]
    ref = Reference(vol.float(), cfg.pad, state.k_max)
    direct = expected_angular_accuracy(ref.slicer, ref.values, ctf_2d(p.ctf[idx], 16, 6.0), state.sigma2[0],
                                       p.rotations[idx].float(), state.k_max,
                                       generator=torch.Generator().manual_seed(cfg.seed + 1))
    assert acc == pytest.approx(float(direct.double().mean()), rel=1e-5)
    assert (out.order, out.refinements) == (order_after, order_after - 2)

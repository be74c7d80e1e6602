"""Auto-refinement (inference/autorefine.py): the prior formula, the restricted insertion and slice
sampling against their full-grid counterparts, pose recovery on a tiny simulated set, resume after a
kill, and the STAR output read back."""

import math
import time

import numpy as np
import pytest
import torch

from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.grids import lowpass_volume
from cryolens.imaging.rotations import random_rotations
from cryolens.imaging.slice import extract_slices, prepare_volume_ft
from cryolens.inference import autorefine as A
from cryolens.inference import oversampling as O
from cryolens.inference.mstep import InsertPixels
from cryolens.inference.prior import map_prior, tau2_from_fsc
from cryolens.inference.rank_timing import totals
from cryolens.inference.likelihood import log_likelihood_table, prepare_image_terms
from cryolens.inference.reconstruct import FourierAccumulator, wiener_regularisation
from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_particles
from cryolens.io.runfolder import RunFolder
from cryolens.io.star import read_star
from cryolens.metrics.fsc import fsc, resolution_at
from cryolens.methods.refine3d import iteration_writer
from cryolens.metrics.pose_error import pose_error_summary
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import read_ground_truth, simulate_dataset
from cryolens.simulate.density import atoms_to_volume

D, PX = 24, 4.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """200 images of 4E43 at D = 24, 4 Å/px, SNR 10, CTF, shifts ≤ 1.5 px; poses removed."""
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), D, PX)
    out = simulate_dataset(tmp_path_factory.mktemp("ar") / "ds", vol, 200, PX, 10.0, shift_std=0.8, shift_max=1.5,
                           seed=3, progress=False)
    p = read_particles(out / "particles.star")
    p.rotations, p.shifts = None, None
    return p, vol, read_ground_truth(out)


def test_tau2_matches_hand_computation():
    """τ² = T·FSC/(1−FSC)·σ²/W per shell (RELION's T·SSNR·σ²_rec, computed by hand here); the MAP
    regulariser σ²/τ² is the Wiener λ = W(1−FSC)/FSC divided by T; a shell without data gets τ² = 0."""
    f = np.array([0.99, 0.9, 0.5, 0.2, 0.05])
    s2 = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0])
    w = torch.tensor([10.0, 8.0, 6.0, 4.0, 0.0], dtype=torch.float64)
    tau2 = tau2_from_fsc(f, s2, w, fudge=4.0)
    hand = [4 * 0.99 / 0.01 * 2 / 10, 4 * 0.9 / 0.1 * 3 / 8, 4 * 1.0 * 4 / 6, 4 * 0.25 * 5 / 4, 0.0]
    assert tau2.tolist() == pytest.approx(hand, rel=1e-12)
    lam = map_prior(s2, tau2)[0]
    wiener = wiener_regularisation(w, f) / 4
    assert lam[:4].tolist() == pytest.approx(wiener[:4].tolist(), rel=1e-12)
    assert math.isinf(float(lam[4]))


def test_coarse_shell_matches_relion_formula():
    """The coarse passes' shell limit is RELION's coarse_size rule, computed by hand: a 15° step on an
    80 Å particle moves its edge by π·80·15/360 = 10.47 Å, so at 1.5 Å/px in a 64 box the limit is
    floor(96 / (1.2 · 10.47)) = 7 shells; it never exceeds k_max and never falls below 4."""
    assert A.coarse_shell(15.0, 64, 1.5, 80.0, 32) == 7
    assert A.coarse_shell(3.75, 64, 1.5, 80.0, 20) == 20
    assert A.coarse_shell(60.0, 64, 1.5, 80.0, 32) == 4


def test_add_points_equals_full_insertion():
    """Inserting only the kx ≥ 0 half-column pixels inside Nyquist with their multiplicities
    (FourierAccumulator.add_points) fills the same grid as the full Hermitian insertion (add)."""
    torch.manual_seed(0)
    d = 16
    y, c, r = fft2_centered(torch.randn(3, d, d)), torch.rand(3, d, d), random_rotations(3)
    full = FourierAccumulator(d, 2, "cpu")
    full.add(y, r, c)
    where = InsertPixels(d, d // 2, "cpu", torch.float32)
    part = FourierAccumulator(d, 2, "cpu")
    px = where.pixels
    part.add_points((y * c).flatten(1)[:, px], (c * c).flatten(1)[:, px], r, where.freqs, where.mult)
    assert torch.allclose(part.data, full.data, atol=1e-4 * float(full.data.abs().max()))
    assert torch.allclose(part.weight, full.weight, atol=1e-5 * float(full.weight.abs().max()))


def test_half_plane_likelihood_equals_full_plane():
    """The half-plane likelihood table (each pixel with its Friedel multiplicity) equals the full-plane
    table of likelihood.prepare_image_terms for real images and a real map, with CTF and shifts (float64)."""
    torch.manual_seed(2)
    d = 16
    y = fft2_centered(torch.randn(3, d, d, dtype=torch.float64))
    c = fft2_centered(torch.randn(3, d, d, dtype=torch.float64)).abs()  # real and Friedel-symmetric, as a CTF
    s2 = torch.rand(d // 2 + 1, dtype=torch.float64) + 0.5
    shifts = torch.randn(5, 2, dtype=torch.float64)
    slices = extract_slices(prepare_volume_ft(torch.randn(d, d, d, dtype=torch.float64)), random_rotations(
        4, dtype=torch.float64), d, hermitian=True)
    full = log_likelihood_table(prepare_image_terms(y, s2, shifts, c, 6), slices)
    half = log_likelihood_table(prepare_image_terms(y, s2, shifts, c, 6, half_plane=True), slices)
    assert torch.allclose(half, full, rtol=1e-12, atol=1e-9)


def test_pixel_values_equal_extracted_slices():
    """The E-step's slice values on the used pixels (half sampled, half by Friedel symmetry) equal
    the full trilinear extraction (imaging.slice.extract_slices) at those pixels, in float64."""
    torch.manual_seed(1)
    vol = torch.randn(16, 16, 16, dtype=torch.float64)
    ref = O.Reference(vol, 2, 7)
    r = random_rotations(4, dtype=torch.float64)
    full = extract_slices(prepare_volume_ft(vol, 2), r, 16).reshape(4, -1)[:, ref.pixels(7)]
    assert torch.allclose(ref.values(r), full, atol=1e-10 * float(full.abs().max()))


def test_posterior_mean_pose_of_weighted_pairs():
    """pose_estimate="mean": an image whose weight is split 3:1 between two grid rotations (and two
    shifts) gets the rotation ~1/4 of the way along the geodesic between them — off the grid — and the
    weighted mean shift; an image with one pair keeps it."""
    from cryolens.imaging.rotations import geodesic_distance
    from cryolens.imaging.so3_grid import so3_grid

    level = 2
    grid = so3_grid(level, dtype=torch.float64)
    a, b = 10, 11
    gap = float(geodesic_distance(grid[a], grid[b]))
    assert 0 < gap < 0.5
    poses = O.WeightedPairs(image=torch.tensor([0, 0, 1]), grid_index=torch.tensor([a, b, b]), level=level,
                          shift=torch.tensor([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]]),
                          weight=torch.tensor([0.75, 0.25, 1.0]), map_rotation=grid[[a, b]].float(),
                          map_shift=torch.zeros(2, 2), max_weight=torch.tensor([0.75, 1.0]),
                          n_significant=torch.tensor([2, 1]))
    rot, shift = O.posterior_mean_pose(poses, 2)
    d_a, d_b = geodesic_distance(rot[0].double(), grid[a]), geodesic_distance(rot[0].double(), grid[b])
    # (the chordal mean sits within 0.4 % of the gap from the geodesic 1/4 point at this 15° gap)
    assert abs(float(d_a) - gap / 4) < 0.01 * gap and abs(float(d_b) - 3 * gap / 4) < 0.01 * gap
    assert abs(float(d_a + d_b) - gap) < 1e-6  # on the geodesic between them
    torch.testing.assert_close(shift[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(rot[1].double(), grid[b], atol=1e-6, rtol=0)
    torch.testing.assert_close(shift[1], torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="pose_estimate"):
        A.RefineConfig(pose_estimate="median")


def _refine(particles, vol, run=None, resume=False, on_iteration=None, device=None, **kw):
    order = kw.pop("healpix_order", 2)
    cfg = A.RefineConfig(initial_lowpass=30.0, healpix_order=order, local_order=3, max_order=3, offset_range=2.0,
                         offset_step=1.0, max_iterations=kw.pop("max_iterations", 5),
                         batch_size=kw.pop("batch_size", 100), max_coarse=8, max_significant=16, **kw)
    return A.auto_refine(particles, vol, config=cfg, run=run, progress=False, resume=resume, on_iteration=on_iteration,
                         device=device)


def test_refinement_recovers_poses_and_beats_start(dataset, device):
    """From a 30 Å low-pass of the truth, refinement finds the simulated poses (median geodesic error
    after the best global rotation below the final 3.75° step) and a map whose FSC against the truth
    crosses 0.5 at a better resolution than the start's."""
    p, vol, gt = dataset
    res = _refine(p, vol, device=device)
    err = pose_error_summary(res.rotations, torch.as_tensor(gt["rotations"]).float())
    assert err["median_deg"] < 3.75
    shift_err = (res.shifts - torch.as_tensor(gt["shifts"]).float()).norm(dim=1).median()
    assert float(shift_err) < 0.5
    start = resolution_at(fsc(lowpass_volume(vol, 30.0, PX), vol), 0.5, PX, D)
    final = resolution_at(fsc(res.volume, vol), 0.5, PX, D)
    assert final < 0.7 * start


def test_resume_after_kill_equals_uninterrupted(dataset, tmp_path, monkeypatch, device):
    """A run killed during its second iteration and resumed from the checkpoint of the first ends with
    exactly the maps, poses and history of an uninterrupted run. The uninterrupted run's history holds each
    iteration's timing: on one rank, an on_iteration that sleeps 0.2 s is found in ``write_s``; every part
    is non-negative, and the parts sum to at most the iteration's wall time; the run's totals are their sums."""
    p, vol, _ = dataset
    sub = p.subset(np.arange(40))
    whole = _refine(sub, vol, run=RunFolder(tmp_path / "a"), max_iterations=2, healpix_order=1,
                    on_iteration=lambda state: time.sleep(0.2), device=device)
    for h in whole.history:
        t = h["timing"]
        assert all(len(v) == 1 for v in t["per_rank"].values())
        assert min(t[k] for k in ("estep_s", "mstep_s", "write_s", "collective_s")) >= 0.0
        assert t["estep_s"] + t["mstep_s"] + t["write_s"] + t["collective_s"] <= t["wall_s"]
        assert 0.2 <= t["write_s"] < t["wall_s"] and t["estep_s"] > 0 and t["mstep_s"] > 0
        assert t["collective_s"] == 0.0  # one process: every collective is a no-op
    assert totals(whole.history)["write_s"] == pytest.approx(sum(h["timing"]["write_s"] for h in whole.history))
    real = A._iteration
    calls = {"n": 0}

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)

    monkeypatch.setattr(A, "_iteration", dying)
    run = RunFolder(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _refine(sub, vol, run=run, max_iterations=2, healpix_order=1, device=device)
    monkeypatch.setattr(A, "_iteration", real)
    resumed = _refine(sub, vol, run=run, resume=True, max_iterations=2, healpix_order=1, device=device,
                      batch_size=None)  # the batch size may change on resume (here: chosen automatically)
    assert len(resumed.history) == len(whole.history)
    if device.type != "cpu":  # a GPU's scatter-adds are not deterministic: the same map, not the same bits
        assert float(np.min(fsc(resumed.volume, whole.volume)[1:])) >= 0.999
        return
    assert torch.equal(resumed.volume, whole.volume)
    assert torch.equal(resumed.rotations, whole.rotations)
    assert torch.equal(resumed.shifts, whole.shifts)
    assert [h["resolution_A"] for h in resumed.history] == [h["resolution_A"] for h in whole.history]


def test_star_output_round_trips(dataset, tmp_path):
    """The per-iteration STAR (RELION 3.1 layout) reads back with our reader to the refined rotations,
    shifts and half-sets."""
    p, vol, _ = dataset
    sub = p.subset(np.arange(40))
    run = RunFolder(tmp_path / "r")
    res = _refine(sub, vol, run=run, max_iterations=1, healpix_order=1, on_iteration=iteration_writer(run, sub))
    back = read_star(run.path("iter001_particles.star"))
    assert torch.allclose(back.rotations, res.rotations, atol=1e-5)
    assert torch.allclose(back.shifts, res.shifts, atol=1e-5)
    assert np.array_equal(np.asarray(back.extra["rlnRandomSubset"]).astype(int), res.half + 1)



@pytest.fixture(scope="module")
def low_snr_refinement(tmp_path_factory):
    """Four iterations on 1,000 images of 4E43 at SNR 0.01 (D = 24, 4 Å/px) from a 30 Å start."""
    vol = atoms_to_volume(read_atoms(bundled_model("4E43")), D, PX)
    out = simulate_dataset(tmp_path_factory.mktemp("lowsnr") / "ds", vol, 1000, PX, 0.01, seed=4, progress=False)
    p = read_particles(out / "particles.star")
    p.rotations, p.shifts = None, None
    return p, vol, _refine(p, vol, max_iterations=4, healpix_order=1)


def test_low_snr_gold_standard_fsc_is_not_inflated(low_snr_refinement):
    """At SNR 0.01 the shells beyond ~16 Å hold no recoverable signal: the reported gold-standard FSC
    is noise around 0 there and equals the FSC of the returned (unfiltered) half maps, and its 0.143
    resolution is not much finer than where the map's FSC against the truth crosses 0.5 (the two
    should agree). MAP-filtered halves read FSC ≈ 0.2 at every shell there and 8.8 Å against the
    truth's 21.6 Å: the filter shrinks those shells until the real-space crop/gridding/mask leakage of
    the halves' shared low-resolution content dominates and correlates them."""
    p, vol, res = low_snr_refinement
    both = np.asarray(fsc(res.half_maps[0], res.half_maps[1]))
    data = res.fsc != 0
    assert np.allclose(res.fsc[data], both[data], atol=1e-6)
    high = res.fsc[6:][data[6:]]
    assert high.size >= 3 and abs(high.mean()) < 0.08, np.round(res.fsc, 2)
    truth = resolution_at(fsc(res.volume, vol), 0.5, PX, D)
    assert res.resolution > 0.7 * truth, (res.resolution, truth)


def test_symmetry_relaxation_lets_local_searches_reach_the_mate():
    """A pseudo-C2 map (8 blob pairs related by a two-fold about a random axis, plus one unpaired
    "ligand" blob) and noiseless images at random poses R. A local search (3.75°, 2.5 steps) started at
    the wrong mate G R (perturbed by ~1°) stays there (≥ 150° off); with relax_symmetry's mates it
    finds the pose that the plain search started near R finds (< 10° off: the 3.75° grid at D 24), and
    started near R, relaxation keeps that pose."""
    from cryolens.imaging.gaussian import gaussian_volume
    from cryolens.imaging.rotations import geodesic_distance, rotvec_to_matrix
    from cryolens.imaging.so3_grid import angular_step
    from cryolens.imaging.symmetry import cyclic_operators

    g = torch.Generator().manual_seed(5)
    u = torch.randn(3, generator=g, dtype=torch.float64)
    two_fold = cyclic_operators(2, u)
    pts = torch.randn(8, 3, generator=g, dtype=torch.float64) * 3.5
    centres = torch.cat([pts, pts @ two_fold[0].T, torch.tensor([[4.0, -3.0, 2.0]], dtype=torch.float64)])
    vol = gaussian_volume(centres, torch.full((17,), 1.5, dtype=torch.float64), torch.ones(17, dtype=torch.float64), D)
    r_true = random_rotations(8, generator=g, dtype=torch.float64)
    y = extract_slices(prepare_volume_ft(vol, 2), r_true, D)
    ref = O.Reference(vol, 2, D // 2 - 1)
    s2 = torch.ones(D // 2 + 1, dtype=torch.float64)
    cfg = A.RefineConfig(max_coarse=8, max_significant=16)
    wobble = rotvec_to_matrix(torch.randn(8, 3, generator=g, dtype=torch.float64) * math.radians(1.0))

    def search(prev, mates):
        stage = O.Stage(order=3, k_max=D // 2 - 1, offset_range=0.0, offset_step=1.0, local=True,
                         local_range_rad=cfg.local_range_steps * math.radians(angular_step(3)), size=D, pixel_size=PX,
                         mates=mates)
        poses = O.posterior_pairs(y, None, s2, ref, stage, wobble @ prev, torch.zeros(8, 2, dtype=torch.float64), cfg)
        return torch.rad2deg(geodesic_distance(poses.map_rotation, r_true))

    wrong = two_fold[0] @ r_true
    plain = search(r_true, None)  # the plain local search from the right mate: the yardstick
    assert float(plain.max()) < 10
    assert float(search(wrong, None).min()) > 150
    torch.testing.assert_close(search(wrong, two_fold), plain)
    torch.testing.assert_close(search(r_true, two_fold), plain)


def test_relaxation_axis_is_the_dimers_pseudo_two_fold(dataset):
    """relax_symmetry="C2": the axis found on the initial map (4E43's truth low-passed to 30 Å, D 24,
    4 Å/px) is within 4° of the rotation axis of the Kabsch superposition of its chains; C1 finds none."""
    from cryolens.bench.scoring import symmetry_operators
    from cryolens.imaging.rotations import matrix_to_rotvec

    p, vol, _ = dataset
    state = A._initial_state(p, vol, A.RefineConfig(initial_lowpass=30.0, relax_symmetry="C2"), torch.device("cpu"))
    rv = matrix_to_rotvec(symmetry_operators(bundled_model("4E43"))[1])
    cos = abs(float(state.relax_axis.double() @ rv)) / float(rv.norm())
    assert math.degrees(math.acos(min(1.0, cos))) < 4.0
    assert state.relax_ops.shape == (1, 3, 3)
    assert A._initial_state(p, vol, A.RefineConfig(initial_lowpass=30.0), torch.device("cpu")).relax_ops is None


def test_solvent_corrected_fsc_is_not_inflated_by_its_own_mask(low_snr_refinement):
    """``solvent_fsc``: the mask is made from the half maps themselves, so an uncorrected masked FSC could
    read its own envelope as signal. At SNR 0.01 the corrected curve stays noise around 0 beyond ~16 Å and
    its resolution no finer than 0.7 × the final map's 0.5 crossing against the truth; the history keeps the
    unmasked resolution, which equals that of the returned half maps."""
    p, vol, _ = low_snr_refinement
    res = _refine(p, vol, max_iterations=4, healpix_order=1, solvent_fsc=True)
    data = res.fsc != 0
    high = res.fsc[6:][data[6:]]
    assert high.size >= 3 and abs(high.mean()) < 0.08, np.round(res.fsc, 2)
    truth = resolution_at(fsc(res.volume, vol), 0.5, PX, D)
    assert res.resolution > 0.7 * truth, (res.resolution, truth)
    unmasked = np.where(data, fsc(res.half_maps[0], res.half_maps[1]), 0.0)
    assert math.isclose(res.history[-1]["resolution_unmasked_A"], resolution_at(unmasked, 0.143, PX, D),
                        rel_tol=1e-6)

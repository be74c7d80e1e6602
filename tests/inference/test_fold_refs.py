"""Leave-fold-out E-step references (inference/fold_refs.py, issue 27): each fold's reference is the half's map
without that fold's images, computed here independently by inserting only the other folds' images; and the
self-locking they remove, measured against the posterior width of an iteration whose reference holds no image."""

import numpy as np
import pytest
import torch

from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.rotations import geodesic_distance, random_rotations
from cryolens.inference import autorefine as A
from cryolens.inference.fold_refs import fold_of, fold_out_maps, joined
from cryolens.inference.reconstruct import FourierAccumulator
from cryolens.io.atomic import read_atoms
from cryolens.io.dataset import read_particles
from cryolens.simulate import bundled_model
from cryolens.simulate.dataset import simulate_dataset
from cryolens.simulate.density import atoms_to_volume


def test_fold_out_maps_equal_reconstructions_from_the_other_folds_only():
    """Three folds of 4 images each (D 16, random CTFs and weights): the map made from the joined sums minus
    fold f's equals the map of a fresh accumulator that only ever saw the other two folds' images, and the
    joined sums give the map of all twelve; the folds deal a half's images by position mod K."""
    torch.manual_seed(1)
    d, k = 16, 3
    y, c = fft2_centered(torch.randn(12, d, d)), torch.rand(12, d, d)
    r, s = random_rotations(12), torch.rand(12)
    fold = fold_of(12, k)
    assert fold.tolist() == [0, 1, 2] * 4 and fold_of(5, 1).tolist() == [0] * 5
    parts = [FourierAccumulator(d, 2, "cpu") for _ in range(k)]
    for f in range(k):
        m = torch.as_tensor(fold == f)
        parts[f].add(y[m], r[m], c[m], s[m])
    reg = torch.linspace(0.1, 2.0, d // 2 + 1, dtype=torch.float64)
    total = joined(parts)
    out = fold_out_maps(total, parts, reg)
    assert out.shape == (k, d, d, d)
    for f in range(k):
        fresh = FourierAccumulator(d, 2, "cpu")
        m = torch.as_tensor(fold != f)
        fresh.add(y[m], r[m], c[m], s[m])
        want = fresh.reconstruct(reg)
        assert torch.allclose(out[f], want, atol=1e-5 * float(want.abs().max()))
        assert not torch.allclose(out[f], out[(f + 1) % k], atol=1e-2 * float(want.abs().max()))
    every = FourierAccumulator(d, 2, "cpu")
    every.add(y, r, c, s)
    assert np.allclose(total.reconstruct(reg).numpy(), every.reconstruct(reg).numpy(), atol=1e-5)
    assert total.count == 12


@pytest.fixture(scope="module")
def ubiquitin_low_snr(tmp_path_factory):
    """120 images of ubiquitin (1UBI) at D = 24, 2 Å/px, SNR 0.1, CTF, shifts ≤ 1.5 px, with their poses."""
    vol = atoms_to_volume(read_atoms(bundled_model("1ubi")), 24, 2.0)
    out = simulate_dataset(tmp_path_factory.mktemp("folds") / "ds", vol, 120, 2.0, 0.1, shift_std=0.8,
                           shift_max=1.5, seed=5, progress=False)
    return read_particles(out / "particles.star"), vol


def test_without_folds_the_posteriors_lock_onto_the_images_own_noise(ubiquitin_low_snr):
    """Two iterations of local searches (3.75° step) from the true poses. Iteration 1 aligns against the given
    map, which holds no image: its posterior width (RMS angle in the local window) is the honest one. Iteration
    2 aligns against half maps that a noisier reference can only make wider — but without folds each image's
    own noise sits in its reference at its last pose: the posteriors shrink (measured 28.7° → 18.2° RMS) and
    over a quarter of the images keep exactly their last pose (measured 28 %). Against leave-fold-out
    references (K = 4) the width is kept (measured 28.2° → 29.8°) and as few keep it as chance allows
    (measured 2 %)."""
    particles, vol = ubiquitin_low_snr
    out = {}
    for folds in (0, 4):
        cfg = A.RefineConfig(initial_lowpass=None, healpix_order=3, local_order=3, max_order=3, offset_range=1.0,
                             offset_step=1.0, max_iterations=2, start_from_poses=True, follow_accuracy=False,
                             batch_size=120, reference_folds=folds, min_gain_shells=-100)
        rots = []
        res = A.auto_refine(particles, vol, config=cfg, progress=False,
                            on_iteration=lambda s, r=rots: r.append(s.rotations.clone()))
        kept = float((geodesic_distance(rots[0].double(), rots[1].double()) < 1e-6).double().mean())
        out[folds] = ([h["window_rms_deg"] for h in res.history], kept)
    (rms_plain, kept_plain), (rms_folds, kept_folds) = out[0], out[4]
    assert rms_plain[1] < 0.75 * rms_plain[0] and kept_plain > 0.15
    assert rms_folds[1] > 0.9 * rms_folds[0] and kept_folds < 0.08

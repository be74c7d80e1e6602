"""Class3D's first iteration: the random division of the particles into K subsets has equal sizes (counted by
hand), so the class priors after it are exactly 1/K (up to one particle), not a random head start."""

import numpy as np
import torch

from cryolens.imaging.ctf import CTFParams
from cryolens.imaging.forward import render_images
from cryolens.imaging.rotations import random_rotations
from cryolens.inference.classify import random_split

from _inference_data import blob_volume

D, PIX = 16, 3.0


def test_random_split_is_one_hot_with_equal_subsets():
    """Each particle in exactly one subset; the subset sizes are ⌊n/k⌋ or ⌈n/k⌉ (n mod k of the larger),
    counted by hand; the same seed gives the same split, another seed another; the class does not
    follow the particle's index (a permutation dealt out, not ``i mod k``)."""
    for n, k, seed in [(7, 3, 0), (2000, 2, 0), (31, 3, 5), (10, 4, 1), (5, 1, 2)]:
        s = random_split(n, k, seed)
        assert s.shape == (n, k) and s.dtype == torch.float64
        assert torch.equal(s.sum(1), torch.ones(n, dtype=torch.float64))
        assert set(s.unique().tolist()) <= {0.0, 1.0}
        want = sorted([n // k] * (k - n % k) + [n // k + 1] * (n % k))
        assert sorted(s.sum(0).long().tolist()) == want
    a, b = random_split(2000, 2, 0), random_split(2000, 2, 1)
    assert torch.equal(a, random_split(2000, 2, 0)) and not torch.equal(a, b)
    labels = a.argmax(1)
    assert not torch.equal(labels, torch.arange(2000) % 2)
    # no order: each half of the particle list holds about half of each class (±5 %, binomial sd 1.1 %)
    assert abs(float(labels[:1000].double().mean()) - 0.5) < 0.05


def test_first_iteration_class_priors_are_the_split_fractions(tmp_path):
    """One skip_align iteration of the relion-class3d schedule from one start map: with the split as
    each image's prior, every image stays in its own subset, so the new class priors are the subset
    fractions — 10/30 each for K = 3, and 15/31, 16/31 for K = 2 (by hand), whatever the seed (the
    former independent draws gave e.g. 0.478 / 0.522 on 2,000 images)."""
    from cryolens.io.mrc import write_stack
    from cryolens.io.particles import Particles
    from cryolens.methods.class3d import classify

    g = torch.Generator().manual_seed(4)
    vol = blob_volume(D, seed=0)
    for n, k, seed, want in [(30, 3, 0, [10 / 30] * 3), (31, 2, 3, [15 / 31, 16 / 31])]:
        rots = random_rotations(n, generator=g)
        ctf = CTFParams.create(torch.linspace(8000, 20000, n), torch.linspace(7000, 21000, n), defocus_angle=0.4)
        img = render_images(vol, rots, None, ctf, PIX) + 0.5 * torch.randn(n, D, D, generator=g)
        path = tmp_path / f"stack{n}.mrcs"
        write_stack(path, img.float().numpy(), PIX)
        p = Particles(PIX, D, [str(path)], np.zeros(n, int), np.arange(n), rots.float(), torch.zeros(n, 2), ctf)
        res = classify(p, vol, {"n_classes": k, "n_iterations": 1, "skip_align": True, "initial_lowpass": 12.0,
                                "seed": seed}, progress=False)
        prior = sorted(res.history[0]["class_prior"])
        np.testing.assert_allclose(prior, sorted(want), rtol=0, atol=1e-12)
        split = random_split(n, k, seed)
        assert np.array_equal(res.labels, split.argmax(1).numpy())

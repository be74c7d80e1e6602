"""Leave-fold-out E-step references (inference/fold_refs.py, issue 27): each fold's reference is the half's map
without that fold's images, computed here independently by inserting only the other folds' images."""

import numpy as np
import torch

from cryolens.imaging.fft import fft2_centered
from cryolens.imaging.rotations import random_rotations
from cryolens.inference.fold_refs import fold_of, fold_out_maps, joined
from cryolens.inference.reconstruct import FourierAccumulator


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

"""Class accuracy: independent of how the predicted labels are named (any permutation gives 1),
and a hand-counted value with errors and an extra class."""

import numpy as np
import pytest

from cryolens.metrics.classes import class_accuracy


def test_permuted_labels_have_accuracy_one():
    """Predicted labels = a permutation of the true ones: best matching recovers the permutation."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    perm = np.array([2, 3, 0, 1])
    out = class_accuracy(perm[truth], truth)
    assert out["accuracy"] == 1.0
    assert out["mapping"] == {int(perm[k]): k for k in range(4)}


def test_accuracy_by_hand():
    """truth 0 0 0 1 1 1, predicted 1 1 2 0 0 0: best matching 1→0, 0→1 gets 5 of 6 right; the
    extra class 2 is unmatched and counts wrong."""
    out = class_accuracy(np.array([1, 1, 2, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 1]))
    assert out["accuracy"] == pytest.approx(5 / 6)

"""Class assignments against a ground truth: accuracy after the best matching of labels."""

from __future__ import annotations

import numpy as np


def confusion(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(K_pred, K_true)`` int counts of images with each (predicted, true) label pair."""
    p = np.asarray(predicted).astype(np.int64).reshape(-1)
    t = np.asarray(truth).astype(np.int64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"class labels: {p.shape[0]} predicted for {t.shape[0]} true")
    if p.size and (p.min() < 0 or t.min() < 0):
        raise ValueError("class labels must be non-negative")
    out = np.zeros((int(p.max(initial=-1)) + 1, int(t.max(initial=-1)) + 1), dtype=np.int64)
    np.add.at(out, (p, t), 1)
    return out


def class_accuracy(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Fraction of images whose predicted class maps to their true class under the one-to-one
    label matching that maximises it (Hungarian, :func:`scipy.optimize.linear_sum_assignment`).
    Predicted classes left unmatched (more classes than states) count as wrong.

    Returns ``{"accuracy": float, "mapping": {pred: true}, "confusion": [[...]]}``."""
    from scipy.optimize import linear_sum_assignment

    c = confusion(predicted, truth)
    if c.size == 0:
        return {"accuracy": float("nan"), "mapping": {}, "confusion": []}
    rows, cols = linear_sum_assignment(-c)
    return {"accuracy": float(c[rows, cols].sum() / c.sum()), "mapping": {int(r): int(k) for r, k in zip(rows, cols)},
            "confusion": c.tolist()}

"""Scores of a discrete assignment against the true states (CryoBench's for compositional sets).

- :func:`adjusted_mutual_information`: the mutual information of the predicted and true partitions of the
  images, corrected for chance (Vinh, Epps & Bailey, JMLR 11:2837, 2010): ``AMI = (MI − E[MI]) /
  (mean(H(U), H(V)) − E[MI])`` with ``E[MI]`` the expectation under random permutations of the labels
  with the same cluster sizes and the arithmetic mean of the two entropies. 1 for identical partitions
  (up to renaming), ≈ 0 for independent ones. Computed by scikit-learn
  (:func:`sklearn.metrics.adjusted_mutual_info_score`).
- :func:`discrete_scores`: AMI and the class accuracy of :func:`cryolens.metrics.classes.class_accuracy`
  (best one-to-one matching of labels) together.
"""

from __future__ import annotations

import numpy as np

from .classes import class_accuracy


def adjusted_mutual_information(predicted: np.ndarray, truth: np.ndarray) -> float:
    """AMI (module docstring) of two labelings ``(N,)`` of the same images (any integer labels)."""
    from sklearn.metrics import adjusted_mutual_info_score

    p = np.asarray(predicted).astype(np.int64).reshape(-1)
    t = np.asarray(truth).astype(np.int64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"adjusted_mutual_information: {p.shape[0]} predicted labels for {t.shape[0]} true")
    return float(adjusted_mutual_info_score(t, p, average_method="arithmetic"))


def discrete_scores(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """``{"ami", "class_accuracy", "confusion"}`` of predicted labels ``(N,)`` against the true states ``(N,)``."""
    ca = class_accuracy(predicted, truth)
    return {"ami": adjusted_mutual_information(predicted, truth), "class_accuracy": ca["accuracy"],
            "confusion": ca["confusion"]}

"""Comparing latent distributions: alignment of coordinate systems and Wasserstein distances.

The review's (§3.1.2) conformational resolution: infer the latent distribution from two halves of
the data, align their coordinate systems, and measure the Wasserstein distance between them.

- Alignment is **orthogonal Procrustes after centring**: ``y ≈ (x − x̄) Q + ȳ`` with ``Q`` in
  ``O(L)`` (rotations and reflections; no scaling, no shear), so a distance is never reduced by
  squashing a distribution. With paired points (the same images embedded twice)
  :func:`orthogonal_procrustes` is the closed-form SVD solution. Two halves of the data hold
  *different* images, so there are no pairs: :func:`wasserstein_procrustes` alternates an optimal
  transport plan (exact EMD, POT) with the Procrustes fit on the plan (Grave et al. 2019),
  starting from every sign pattern of the principal axes and keeping the best.
- Distances are exact (``ot.emd2``) W2 (Euclidean ground cost, squared, then square-rooted) or W1.
- Against a known ground truth of other dimension (e.g. a hinge angle per image) the latents are
  mapped to the truth by the least-squares **affine** map fitted on the images' pairs
  (:func:`latent_vs_truth`), and W1 is measured in the truth's units.
"""

from __future__ import annotations

import itertools

import numpy as np


def _as2d(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _paired_clouds(x: np.ndarray, y: np.ndarray, max_points: int, seed: int, what: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``x``, ``y`` as 2D float64 clouds of one dimension, each subsampled (seeded) to ``max_points``."""
    a, b = _as2d(x), _as2d(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{what}: dimensions differ ({a.shape[1]} and {b.shape[1]})")
    rng = np.random.default_rng(seed)
    if a.shape[0] > max_points:
        a = a[rng.choice(a.shape[0], max_points, replace=False)]
    if b.shape[0] > max_points:
        b = b[rng.choice(b.shape[0], max_points, replace=False)]
    return a, b


def wasserstein(x: np.ndarray, y: np.ndarray, p: int = 2, max_points: int = 2000, seed: int = 0) -> float:
    """Exact ``W_p`` (p = 1 or 2) between the empirical distributions of ``x (n, L)`` and ``y (m, L)``
    (uniform weights, Euclidean ground distance), via POT's network simplex. Clouds larger than
    ``max_points`` are subsampled (seeded) to keep the ``n × m`` cost matrix small."""
    import ot

    a, b = _paired_clouds(x, y, max_points, seed, "wasserstein")
    cost = ot.dist(a, b, metric="sqeuclidean" if p == 2 else "euclidean")
    w = ot.emd2(np.full(a.shape[0], 1 / a.shape[0]), np.full(b.shape[0], 1 / b.shape[0]), cost, numItermax=10 ** 7)
    return float(np.sqrt(max(w, 0.0)) if p == 2 else w)


def gaussian_w2(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Closed-form W2 between two Gaussians:
    ``W2² = |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ2^½ Σ1 Σ2^½)^½)``."""
    from scipy.linalg import sqrtm

    m1, m2 = np.atleast_1d(mean1).astype(float), np.atleast_1d(mean2).astype(float)
    c1, c2 = np.atleast_2d(cov1).astype(float), np.atleast_2d(cov2).astype(float)
    s2 = np.real(sqrtm(c2))
    cross = np.real(sqrtm(s2 @ c1 @ s2))
    return float(np.sqrt(max(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * cross), 0.0)))


def orthogonal_procrustes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired points ``x, y (n, L)``: ``Q`` in ``O(L)`` minimising ``‖(x − x̄) Q − (y − ȳ)‖_F``.
    Returns ``(Q (L, L), x̄ (L,), ȳ (L,))``; apply as ``(x − x̄) @ Q + ȳ``."""
    a, b = _as2d(x), _as2d(y)
    if a.shape != b.shape:
        raise ValueError(f"orthogonal_procrustes: shapes differ {a.shape} and {b.shape}")
    ma, mb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ma).T @ (b - mb))
    return u @ vt, ma, mb


def _principal(a: np.ndarray) -> np.ndarray:
    c = a - a.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return vt  # rows: principal axes, largest variance first


def wasserstein_procrustes(x: np.ndarray, y: np.ndarray, iterations: int = 20, max_points: int = 1000,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Align two *unpaired* clouds ``x (n, L)``, ``y (m, L)``: ``Q`` in ``O(L)`` and the centres that
    minimise ``W2((x − x̄) Q + ȳ, y)``. Alternates the exact OT plan with orthogonal Procrustes on
    the plan, from every sign flip of ``x``'s principal axes mapped onto ``y``'s (2^L starts, capped
    at 64 by flipping only the first 6 axes). Returns ``(Q, x̄, ȳ, W2 after alignment)``."""
    import ot

    a, b = _paired_clouds(x, y, max_points, seed, "wasserstein_procrustes")
    ma, mb = a.mean(0), b.mean(0)
    ac, bc = a - ma, b - mb
    wa, wb = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    pa, pb = _principal(ac), _principal(bc)
    dim = a.shape[1]
    best: tuple[float, np.ndarray] | None = None
    for signs in itertools.product((1.0, -1.0), repeat=min(dim, 6)):
        s = np.ones(dim)
        s[:len(signs)] = signs
        q = pa.T @ np.diag(s) @ pb
        for _ in range(iterations):
            plan = ot.emd(wa, wb, ot.dist(ac @ q, bc), numItermax=10 ** 7)
            u, _, vt = np.linalg.svd(ac.T @ plan @ bc)
            q_new = u @ vt
            if np.allclose(q_new, q, atol=1e-10):
                q = q_new
                break
            q = q_new
        w = float(np.sqrt(max(ot.emd2(wa, wb, ot.dist(ac @ q, bc), numItermax=10 ** 7), 0.0)))
        if best is None or w < best[0]:
            best = (w, q)
    assert best is not None
    return best[1], ma, mb, best[0]


def conformational_resolution(latents_half1: np.ndarray, latents_half2: np.ndarray, max_points: int = 1000,
                              seed: int = 0) -> dict:
    """The review's conformational-resolution score: W2 between the latent distributions inferred
    from two halves of the data after :func:`wasserstein_procrustes` alignment (orthogonal, centred).

    Returns ``{"w2": aligned W2, "w2_unaligned", "spread": RMS distance of the latents to their
    mean (both halves), "w2_relative": w2 / spread (0 = the halves agree)}``."""
    a, b = _as2d(latents_half1), _as2d(latents_half2)
    _, _, _, w = wasserstein_procrustes(a, b, max_points=max_points, seed=seed)
    spread = float(np.sqrt(0.5 * (((a - a.mean(0)) ** 2).sum(1).mean() + ((b - b.mean(0)) ** 2).sum(1).mean())))
    return {"w2": w, "w2_unaligned": wasserstein(a, b, 2, max_points, seed), "spread": spread,
            "w2_relative": w / spread if spread > 0 else float("nan")}


def latent_vs_truth(latents: np.ndarray, truth: np.ndarray, max_points: int = 2000, seed: int = 0) -> dict:
    """Inferred latents ``(N, L)`` against the ground-truth coordinate ``(N,)`` or ``(N, T)`` of the
    same images: the least-squares affine map latents → truth, then W1 between the mapped
    distribution and the true one (truth units) and the R² of the map.

    Returns ``{"w1": ..., "r2": ..., "truth_std": ...}``."""
    z, t = _as2d(latents), _as2d(truth)
    if z.shape[0] != t.shape[0]:
        raise ValueError(f"latent_vs_truth: {z.shape[0]} latents for {t.shape[0]} truth values")
    design = np.hstack([z, np.ones((z.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(design, t, rcond=None)
    pred = design @ coef
    ss_res = float(((t - pred) ** 2).sum())
    ss_tot = float(((t - t.mean(0)) ** 2).sum())
    return {"w1": wasserstein(pred, t, 1, max_points, seed), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
            "truth_std": float(np.sqrt(ss_tot / t.shape[0]))}


def spearman_best_axis(latents: np.ndarray, truth: np.ndarray) -> dict:
    """|Spearman ρ| between the ground-truth coordinate ``(N,)`` (a hinge angle, an ANM amplitude) and the
    latent axis that follows it best, CryoBench's score of a continuous latent space: the candidates are
    each latent coordinate of ``latents (N, L)`` and each of its principal axes (centred PCA, so an axis
    that is a mix of coordinates counts too). ρ is the Pearson correlation of the ranks (ties get their
    mean rank, :func:`scipy.stats.rankdata`).

    Returns ``{"abs_spearman": best |ρ|, "axis": "z<i>" or "pc<i>", "abs_spearman_pc1": |ρ| on the first
    principal axis}`` (NaN when the truth or every candidate is constant)."""
    from scipy.stats import rankdata

    z, t = _as2d(latents), np.asarray(truth, dtype=np.float64).reshape(-1)
    if z.shape[0] != t.shape[0]:
        raise ValueError(f"spearman_best_axis: {z.shape[0]} latents for {t.shape[0]} truth values")
    zc = z - z.mean(0)
    pcs = zc @ np.linalg.svd(zc, full_matrices=False)[2].T if z.shape[0] > 1 else zc
    rt = rankdata(t)
    rt = rt - rt.mean()

    def rho(x: np.ndarray) -> float:
        rx = rankdata(x)
        rx = rx - rx.mean()
        den = np.sqrt((rx @ rx) * (rt @ rt))
        return float(abs(rx @ rt) / den) if den > 0 else float("nan")

    cands = {f"z{i}": rho(z[:, i]) for i in range(z.shape[1])}
    cands.update({f"pc{i + 1}": rho(pcs[:, i]) for i in range(pcs.shape[1])})
    finite = {k: v for k, v in cands.items() if np.isfinite(v)}
    if not finite:
        return {"abs_spearman": float("nan"), "axis": "", "abs_spearman_pc1": float("nan")}
    best = max(finite, key=finite.get)
    return {"abs_spearman": finite[best], "axis": best, "abs_spearman_pc1": cands.get("pc1", float("nan"))}

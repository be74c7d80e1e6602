"""Metrics of heterogeneous reconstructions against a ground truth of per-image maps.

- :func:`per_image_fsc_auc`: CryoBench's per-image score — decode each sampled image's latent to a
  map, FSC it against that image's ground-truth map, and take the area under the curve
  (:func:`cryolens.metrics.fsc_auc`, cycles/px over ``[0, 0.5]``; a perfect map gives 0.5).
- :func:`per_conformation_fsc`: each ground-truth state against its best-matching estimated map.
- :func:`heterogeneity_gain`: whether a benchmark's heterogeneity matters — the per-image FSC-AUC of the
  true per-image maps against that of the consensus map, on the ground truth alone.
- :func:`fsc_distance_matrix`, :func:`cluster_by_resolution`, :func:`conformational_clustering`:
  the review's (§3.1.2) hierarchical clustering of maps by FSC. Two maps are told apart at
  resolution ``r`` (Å) when their FSC falls below 0.5 before ``r``: the distance between maps ``i``
  and ``j`` is the resolution (Å) at which their FSC first crosses 0.5 (:func:`resolution_at`).
  Complete-linkage clustering on that distance, cut at ``r``, gives groups of maps that agree to
  better than ``r`` Å — the number of conformations distinguishable at ``r``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .fsc import fsc, fsc_auc, resolution_at


def _sample(n_total: int, n_images: int, seed: int) -> np.ndarray:
    n = min(int(n_images), int(n_total))
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def per_image_fsc_auc(decode: Callable[[torch.Tensor], torch.Tensor], latents: np.ndarray | torch.Tensor,
                      truth_volumes: np.ndarray | torch.Tensor, truth_labels: np.ndarray, n_images: int = 100,
                      seed: int = 0, device: torch.device | str | None = None, batch_size: int | None = None,
                      return_indices: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """FSC-AUC of each sampled image's decoded map against its ground-truth map (CryoBench).

    decode: ``z (B, L) float32 → (B, D, D, D)`` maps ``[z, y, x]`` (a method's decoder).
    latents: ``(N, L)`` every image's estimated latent. truth_volumes: ``(K, D, D, D)`` the
    ground-truth maps; truth_labels: ``(N,)`` int, the state of each image.
    n_images: how many images to score (a seeded random subset without replacement; all when fewer).
    device: where the latents are sent before decoding (default: CPU). batch_size: latents decoded
    per call (default: as many maps as fit in 256 MB, at most ``n_images`` — one call for small boxes,
    which matters for decoders that start a program).
    Returns ``(n,)`` float64 FSC-AUC per scored image (``[0, 0.5]`` for a sensible map; 0.5 = the
    truth itself, ≈ 0 = unrelated), in image order; with ``return_indices`` also the ``(n,)`` indices.
    """
    z_all = torch.as_tensor(np.asarray(latents, dtype=np.float32) if not isinstance(latents, torch.Tensor)
                            else latents.detach().float())
    truth = torch.as_tensor(np.asarray(truth_volumes) if not isinstance(truth_volumes, torch.Tensor)
                            else truth_volumes)
    labels = np.asarray(truth_labels).astype(np.int64).reshape(-1)
    if z_all.dim() == 1:
        z_all = z_all[:, None]
    if z_all.shape[0] != labels.shape[0]:
        raise ValueError(f"per_image_fsc_auc: {z_all.shape[0]} latents for {labels.shape[0]} labels")
    if truth.dim() != 4:
        raise ValueError(f"per_image_fsc_auc: truth_volumes must be (K, D, D, D), got {tuple(truth.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= truth.shape[0]):
        raise ValueError(f"per_image_fsc_auc: labels outside 0..{truth.shape[0] - 1}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    d = truth.shape[-1]
    idx = _sample(z_all.shape[0], n_images, seed)
    if batch_size is None:
        batch_size = max(1, min(len(idx), (256 * 2 ** 20) // (4 * d ** 3)))
    out = np.empty(idx.shape[0], dtype=np.float64)
    with torch.no_grad():
        for s in range(0, idx.shape[0], batch_size):
            sel = idx[s:s + batch_size]
            maps = decode(z_all[torch.as_tensor(sel)].to(dev))
            if tuple(maps.shape) != (len(sel), d, d, d):
                raise ValueError(f"per_image_fsc_auc: decode returned {tuple(maps.shape)}, "
                                 f"expected ({len(sel)}, {d}, {d}, {d})")
            ref = truth[torch.as_tensor(labels[sel])].to(maps.device)
            curves = fsc(maps.float(), ref.float())
            out[s:s + len(sel)] = [fsc_auc(c, d) for c in curves]
    return (out, idx) if return_indices else out


def per_conformation_fsc(estimated: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor,
                         pixel_size: float, threshold: float = 0.5, paired: bool = False) -> dict:
    """Each ground-truth state ``(K, D, D, D)`` against its best estimated map ``(M, D, D, D)``.

    Estimated maps are matched one-to-one to truth states to maximise the summed FSC-AUC
    (Hungarian; with ``M < K`` some states stay unmatched and get no curve); ``paired``: estimated map
    ``k`` is state ``k``'s (``M = K``, e.g. decoded from that state's images), no matching. Returns
    ``{"match": [est index or -1 per state], "fsc": [(D//2+1,) curve per state],
    "auc": [...], "resolution_A": [...] (at ``threshold``), "mean_resolution_A", "mean_auc"}``.
    """
    from scipy.optimize import linear_sum_assignment

    est = torch.as_tensor(np.asarray(estimated)) if not isinstance(estimated, torch.Tensor) else estimated
    tru = torch.as_tensor(np.asarray(truth)) if not isinstance(truth, torch.Tensor) else truth
    if est.dim() == 3:
        est = est[None]
    d = tru.shape[-1]
    k, m = tru.shape[0], est.shape[0]
    est = est.to(tru.device)
    if paired:
        if m != k:
            raise ValueError(f"per_conformation_fsc: {m} estimated maps paired with {k} states")
        diag = fsc(tru, est)  # (K, shells)
        curves = np.zeros((k, k, diag.shape[-1]))
        curves[np.arange(k), np.arange(k)] = diag
        auc = np.full((k, k), -1.0)
        auc[np.arange(k), np.arange(k)] = [fsc_auc(c, d) for c in diag]
        match = np.arange(k)
    else:
        curves = np.stack([fsc(tru[i].expand(m, d, d, d), est) for i in range(k)])  # (K, M, shells)
        auc = np.array([[fsc_auc(curves[i, j], d) for j in range(m)] for i in range(k)])
        rows, cols = linear_sum_assignment(-auc)
        match = np.full(k, -1)
        match[rows] = cols
    res, aucs, out_curves = [], [], []
    for i in range(k):
        if match[i] < 0:
            res.append(float("inf"))
            aucs.append(0.0)
            out_curves.append([])
            continue
        c = curves[i, match[i]]
        res.append(resolution_at(c, threshold, pixel_size, d))
        aucs.append(float(auc[i, match[i]]))
        out_curves.append(c.tolist())
    finite = [r for r in res if np.isfinite(r)]
    return {"match": match.tolist(), "fsc": out_curves, "auc": aucs, "resolution_A": res,
            "mean_resolution_A": float(np.mean(finite)) if finite else float("inf"),
            "mean_auc": float(np.mean(aucs))}


def fsc_distance_matrix(volumes: np.ndarray | torch.Tensor, pixel_size: float, threshold: float = 0.5) -> np.ndarray:
    """``(n, n)`` float64: the resolution (Å) at which the FSC of maps ``i`` and ``j`` first falls
    below ``threshold`` (:func:`resolution_at`; ``2 · pixel_size`` when it never does, ``inf`` when
    already below at shell 1); 0 on the diagonal. volumes: ``(n, D, D, D)``."""
    v = torch.as_tensor(np.asarray(volumes)) if not isinstance(volumes, torch.Tensor) else volumes
    n, d = v.shape[0], v.shape[-1]
    out = np.zeros((n, n))
    for i in range(n - 1):
        rest = v[i + 1:]
        curves = fsc(v[i].expand_as(rest), rest)
        for j, c in enumerate(curves, start=i + 1):
            out[i, j] = out[j, i] = resolution_at(c, threshold, pixel_size, d)
    # an "inf" distance (unrelated maps) is capped at the box size so linkage stays finite
    return np.minimum(out, d * pixel_size)


def cluster_by_resolution(distance: np.ndarray, resolutions: np.ndarray) -> np.ndarray:
    """Complete-linkage clusters of a :func:`fsc_distance_matrix` cut at each resolution (Å).

    Returns ``(len(resolutions), n)`` int labels: maps in one cluster all agree (FSC ≥ the
    threshold) to better than that resolution. Coarser cuts merge more maps."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    dist = np.asarray(distance, dtype=np.float64)
    n = dist.shape[0]
    if n < 2:
        return np.zeros((len(resolutions), n), dtype=np.int64)
    tree = linkage(squareform(dist, checks=False), method="complete")
    # a pair at exactly resolution r is distinguishable only beyond r: cut just above it
    return np.stack([fcluster(tree, t=float(r) * (1 + 1e-9), criterion="distance") - 1
                     for r in resolutions]).astype(np.int64)


def _rand_index(a: np.ndarray, b: np.ndarray) -> float:
    same_a = a[:, None] == a[None, :]
    same_b = b[:, None] == b[None, :]
    iu = np.triu_indices(len(a), 1)
    return float(np.mean(same_a[iu] == same_b[iu])) if iu[0].size else 1.0


def conformational_clustering(estimated: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor,
                              pixel_size: float, threshold: float = 0.5) -> dict:
    """The review's hierarchical clustering, applied to the per-image maps of a method and the
    ground-truth maps of the same images (both ``(n, D, D, D)``, same order).

    At each FSC shell's resolution ``r = D·px/k`` (k = 1 … D/2) the maps are clustered
    (:func:`cluster_by_resolution`). Returns ``{"resolution_A": [...], "n_clusters": [...],
    "n_clusters_truth": [...], "rand_index": [...] (agreement of the two partitions over image pairs),
    "mean_rand_index"}``: a method resolves conformations at ``r`` when it splits the images as the
    truth does there.
    """
    e = torch.as_tensor(np.asarray(estimated)) if not isinstance(estimated, torch.Tensor) else estimated
    d = e.shape[-1]
    res = d * pixel_size / np.arange(1, d // 2 + 1)
    lab_e = cluster_by_resolution(fsc_distance_matrix(e, pixel_size, threshold), res)
    lab_t = cluster_by_resolution(fsc_distance_matrix(truth, pixel_size, threshold), res)
    rand = [_rand_index(a, b) for a, b in zip(lab_e, lab_t)]
    return {"resolution_A": res.tolist(), "n_clusters": [int(x.max()) + 1 for x in lab_e],
            "n_clusters_truth": [int(x.max()) + 1 for x in lab_t], "rand_index": rand,
            "mean_rand_index": float(np.mean(rand))}


def heterogeneity_gain(volumes: np.ndarray | torch.Tensor, populations: np.ndarray | list[float],
                       pixel_size: float, resolution: float | None = None) -> dict:
    """How much a benchmark's heterogeneity matters, on its ground truth alone: the population-weighted
    mean per-image FSC-AUC of the ideal heterogeneous answer (each image's own true map) against that of
    the ideal homogeneous answer (the consensus, the population-weighted mean of the maps), both against
    each image's true map.

    volumes: ``(K, D, D, D)`` the true maps; populations: ``(K,)`` fractions of the images in each state
    (normalised here). resolution: Å; when given, both answers are first low-passed there
    (:func:`cryolens.imaging.grids.lowpass_volume`), as a method that reaches that resolution would be,
    so the check is not won by detail no method recovers; None compares the unfiltered maps (then the
    heterogeneous answer scores 0.5, the FSC-AUC of a map with itself).
    Returns ``{"auc_heterogeneous", "auc_consensus", "gain" (= het / consensus − 1), "auc_consensus_per_state"}``.
    """
    from ..imaging.grids import lowpass_volume

    v = torch.as_tensor(np.asarray(volumes)) if not isinstance(volumes, torch.Tensor) else volumes
    v = v.double()
    p = np.asarray(populations, dtype=np.float64).reshape(-1)
    if p.shape[0] != v.shape[0] or p.sum() <= 0 or (p < 0).any():
        raise ValueError(f"heterogeneity_gain: {p.shape[0]} populations for {v.shape[0]} maps (non-negative, sum > 0)")
    p = p / p.sum()
    d = v.shape[-1]
    consensus = (torch.as_tensor(p)[:, None, None, None] * v).sum(0)

    def filt(x: torch.Tensor) -> torch.Tensor:
        return x if resolution is None else lowpass_volume(x, float(resolution), pixel_size)

    cons = filt(consensus)
    het = np.array([fsc_auc(fsc(filt(vk), vk), d) for vk in v])
    hom = np.array([fsc_auc(fsc(cons, vk), d) for vk in v])
    a_het, a_hom = float(p @ het), float(p @ hom)
    return {"auc_heterogeneous": a_het, "auc_consensus": a_hom, "gain": a_het / a_hom - 1.0,
            "auc_consensus_per_state": hom.tolist()}

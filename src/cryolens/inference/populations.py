"""The population of maps a trained map generator ``z ~ N(0, I) → V(z)`` stands for (Multi-CryoGAN): sampled
maps, their k-means centres and the fraction of the samples nearest to each centre."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError


@dataclass
class MapPopulation:
    """samples: ``(n, D, D, D)`` float32 maps. centres: ``(K, D, D, D)`` k-means centres (in map space).
    labels: ``(n,)`` int64 centre of each sample. populations: ``(K,)`` fraction of the samples per centre,
    centres ordered by decreasing population."""

    samples: torch.Tensor
    centres: torch.Tensor
    labels: np.ndarray
    populations: np.ndarray


def sample_maps(generator, n: int, seed: int, device: torch.device | str = "cpu", scale: float = 1.0,
                chunk: int = 100) -> torch.Tensor:
    """``n`` maps ``(n, D, D, D)`` float32 CPU of ``generator.render(z)`` at ``z ~ N(0, I_L)`` (seeded, drawn
    on the CPU), times ``scale``, ``chunk`` at a time."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(int(n), int(generator.zdim), generator=g)
    return torch.cat([generator.render(z[i:i + chunk].to(device)).cpu() * scale for i in range(0, int(n), chunk)])


def kmeans_maps(samples: torch.Tensor, k: int, seed: int = 0) -> MapPopulation:
    """k-means (scikit-learn, k-means++, 10 starts) of the maps ``samples (n, D, D, D)`` as vectors."""
    from sklearn.cluster import KMeans

    n = samples.shape[0]
    if not 1 <= k <= n:
        raise InputError(f"k-means of sampled maps: {k} centres for {n} samples")
    x = samples.reshape(n, -1).numpy().astype(np.float64)
    km = KMeans(n_clusters=int(k), n_init=10, random_state=int(seed)).fit(x)
    counts = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-counts, kind="stable")
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    centres = torch.as_tensor(km.cluster_centers_[order], dtype=torch.float32).reshape(k, *samples.shape[1:])
    return MapPopulation(samples, centres, relabel[km.labels_], counts[order] / n)

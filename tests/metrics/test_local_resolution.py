"""The windowed local resolution (metrics/local_resolution.py): identical half maps are at Nyquist
everywhere; half maps with independent noise that is strong on one side of the box and weak on the other
read coarser on the noisy side; at a window centre the value is the 0.143 crossing of the FSC of the two
windowed maps computed here with numpy's FFT (the RELION shell rule of docs/CONVENTIONS.md)."""

import numpy as np
import torch

from cryolens.imaging import gaussian_volume
from cryolens.imaging.grids import soft_edge
from cryolens.metrics.fsc import resolution_at
from cryolens.metrics.local_resolution import local_resolution

D, PX = 16, 2.0


def structure() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(40, 3, generator=g) - 0.5) * 12
    return gaussian_volume(centres.double(), torch.full((40,), 0.8, dtype=torch.float64),
                           torch.ones(40, dtype=torch.float64), D)


def numpy_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(D) * D
    kz, ky, kx = np.meshgrid(k, k, np.arange(D // 2 + 1), indexing="ij")
    shell = np.round(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    out = []
    for s in range(D // 2 + 1):
        m = shell == s
        out.append((fa[m] * fb[m].conj()).real.sum() / np.sqrt((abs(fa[m]) ** 2).sum() * (abs(fb[m]) ** 2).sum()))
    return np.array(out)


def test_local_resolution_follows_the_local_noise():
    v = structure()
    same = local_resolution(v, v, PX, radius=5.0, step=4)
    assert torch.allclose(same, torch.full_like(same, 2 * PX))
    g = torch.Generator().manual_seed(1)
    x = torch.arange(D, dtype=torch.float64)[None, None, :].expand(D, D, D)
    amp = torch.where(x < D // 2, 0.6, 0.02)  # noisy at x < 0, clean at x ≥ 0
    h1 = v + amp * torch.randn(D, D, D, generator=g, dtype=torch.float64)
    h2 = v + amp * torch.randn(D, D, D, generator=g, dtype=torch.float64)
    loc = local_resolution(h1, h2, PX, radius=4.0, step=4, edge=2.0)
    assert float(loc[:, :, :4].mean()) > 1.3 * float(loc[:, :, -4:].mean())
    # the centre (x, y, z) = (2 − 8, 6 − 8, 10 − 8) px is stored at the voxels nearest to it
    r = np.stack(np.meshgrid(*(np.arange(D) - D // 2,) * 3, indexing="ij")[::-1], -1)  # (x, y, z) at [z, y, x]
    w = soft_edge(torch.as_tensor(np.linalg.norm(r - np.array([-6, -2, 2]), axis=-1)), 4.0, 2.0).numpy()
    expected = resolution_at(numpy_fsc(h1.numpy() * w, h2.numpy() * w), 0.143, PX, D)
    assert abs(float(loc[10, 6, 2]) - expected) < 1e-6 * expected

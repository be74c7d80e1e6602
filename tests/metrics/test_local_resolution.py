"""The windowed local resolution (metrics/local_resolution.py): identical half maps are at Nyquist
everywhere; half maps with independent noise that is strong on one side of the box and weak on the other
read coarser on the noisy side; at a window centre the value is the 0.143 crossing of the FSC of the two
windowed maps, cut to the window's cube, computed here with numpy's FFT (the RELION shell rule of
docs/CONVENTIONS.md)."""

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
    n = a.shape[-1]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, np.arange(n // 2 + 1), indexing="ij")
    shell = np.round(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    out = []
    for s in range(n // 2 + 1):
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
    # the centre (x, y, z) = (2 − 8, 6 − 8, 10 − 8) px is stored at the voxels nearest to it; its window
    # (support 4 + 2 px) is cut to a cube of C = 14 voxels from z, y, x = 10 − 7, 6 − 7, 2 − 7 (zeros outside)
    c = 14
    r = np.stack(np.meshgrid(*(np.arange(c) - c // 2,) * 3, indexing="ij")[::-1], -1)
    w = soft_edge(torch.as_tensor(np.linalg.norm(r, axis=-1)), 4.0, 2.0).numpy()
    cube = [np.pad(h.numpy(), c // 2)[10:10 + c, 6:6 + c, 2:2 + c] for h in (h1, h2)]
    expected = resolution_at(numpy_fsc(cube[0] * w, cube[1] * w), 0.143, PX, c)
    assert abs(float(loc[10, 6, 2]) - expected) < 1e-6 * expected
    # the old definition (the window's FSC over the whole box) reads a different value here: the cut matters
    rr = np.stack(np.meshgrid(*(np.arange(D) - D // 2,) * 3, indexing="ij")[::-1], -1)
    ww = soft_edge(torch.as_tensor(np.linalg.norm(rr - np.array([-6, -2, 2]), axis=-1)), 4.0, 2.0).numpy()
    assert abs(resolution_at(numpy_fsc(h1.numpy() * ww, h2.numpy() * ww), 0.143, PX, D) - expected) > 1e-3

"""Tiny simulated datasets for the neural-volume tests: a Gaussian-blob volume whose one blob slides
along x with a per-image coordinate (continuous heterogeneity), random poses, shifts and CTFs."""

import numpy as np
import torch

from cryolens.imaging import CTFParams, gaussian_volume, random_rotations, render_images
from cryolens.io.mrc import write_stack
from cryolens.io.particles import Particles

PX = 3.0


def blob_volume(d: int, t: float = 0.0) -> torch.Tensor:
    """A fixed 3-blob body plus one blob at x = 4·t px (``t`` the conformation coordinate)."""
    centers = torch.tensor([[-3.0, -2.0, 1.0], [2.0, 3.0, -1.0], [0.0, 0.0, 3.0], [4.0 * t, -3.0, -3.0]])
    sigmas = torch.tensor([1.8, 1.6, 1.5, 1.5]) * d / 16
    amps = torch.tensor([1.0, 0.8, 0.7, 1.0])
    return gaussian_volume(centers * d / 16, sigmas, amps, d)


def blob_dataset(tmp_path, n: int, d: int = 16, hetero: bool = False, noise: float = 0.0, seed: int = 0,
                 ctf: bool = True):
    """Write a stack; return (particles, t (N,) coordinates, volumes rendered per image)."""
    g = torch.Generator().manual_seed(seed)
    rots = random_rotations(n, generator=g)
    shifts = (torch.rand(n, 2, generator=g) - 0.5) * 2
    t = (torch.rand(n, generator=g) * 2 - 1) if hetero else torch.zeros(n)
    params = None
    if ctf:
        du = 8000 + 8000 * torch.rand(n, generator=g)
        params = CTFParams.create(du, du - 300, torch.rand(n, generator=g) * 3, 300, 2.7, 0.1)
    images = torch.empty(n, d, d)
    levels = torch.round((t + 1) * 10) / 10 - 1 if hetero else t  # 21 distinct states
    for lv in torch.unique(levels):
        m = levels == lv
        images[m] = render_images(blob_volume(d, float(lv)), rots[m], shifts[m],
                                  None if params is None else params[m], PX)
    images = images + noise * torch.randn(images.shape, generator=g)
    path = tmp_path / "stack.mrcs"
    write_stack(path, images.numpy(), PX)
    particles = Particles(PX, d, [str(path)], np.zeros(n, int), np.arange(n), rots, shifts, params)
    return particles, levels.numpy()

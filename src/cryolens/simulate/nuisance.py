"""The random hidden variables of a simulated dataset: CTFs, shifts, and per-image noise streams.

Every random quantity has its own generator derived from the dataset's seed (:func:`_generator`), and
each image's noise its own (seed, image index) stream (:func:`image_noise`), so that a dataset does not
depend on which other quantities were given, nor on the order or chunking of the rendering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..imaging.ctf import CTFParams

# independent random streams derived from the seed (never reorder: it would change every dataset)
_STREAMS = {"labels": 1, "rotations": 2, "shifts": 3, "ctf": 4, "pilot": 5, "noise": 6}


def _generator(seed: int, stream: str) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), _STREAMS[stream]]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def _noise_seed(seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), _STREAMS["noise"]]).generate_state(1, np.uint64)[0])


def image_noise(seed: int, indices: Sequence[int] | np.ndarray, size: int, sigma: float) -> np.ndarray:
    """``(B, D, D)`` float32 white Gaussian noise of standard deviation ``sigma`` for the images
    ``indices`` of a dataset simulated with ``seed`` (each image its own stream)."""
    base = _noise_seed(seed)
    out = np.empty((len(indices), size, size), dtype=np.float32)
    for j, i in enumerate(indices):
        out[j] = np.random.default_rng([base, int(i)]).standard_normal((size, size), dtype=np.float32)
    return out * np.float32(sigma)


def random_ctf(n: int, defocus_range: tuple[float, float] = (10000.0, 25000.0), astigmatism: float = 500.0,
               voltage: float = 300.0, cs: float = 2.7, amplitude_contrast: float = 0.1, bfactor: float = 0.0,
               generator: torch.Generator | None = None) -> CTFParams:
    """``n`` CTFs: mean defocus uniform in ``defocus_range`` (Å, underfocus positive), astigmatism
    ``U − V`` uniform in ``[0, astigmatism]`` Å (``U = mean + ½·astig``, ``V = mean − ½·astig``),
    angle uniform in ``[0, π)`` radians; voltage kV, Cs mm, amplitude contrast Q0, B-factor Å²."""
    lo, hi = float(defocus_range[0]), float(defocus_range[1])
    if not (0 < lo <= hi):
        raise InputError(f"defocus range {lo}..{hi} Å: need 0 < min <= max")
    if astigmatism < 0 or astigmatism / 2 >= lo:
        raise InputError(f"astigmatism {astigmatism} Å: need 0 <= astigmatism < 2 × minimum defocus")
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    mean = lo + (hi - lo) * u[:, 0]
    astig = astigmatism * u[:, 1]
    angle = math.pi * u[:, 2]
    return CTFParams.create(mean + astig / 2, mean - astig / 2, angle, voltage, cs, amplitude_contrast, 0.0, bfactor)


def random_shifts(n: int, std: float, max_shift: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 2)`` px shifts, isotropic Gaussian of per-axis ``std`` truncated (by redrawing) to
    ``|s| ≤ max_shift`` when given."""
    if std < 0 or (max_shift is not None and max_shift < 0):
        raise InputError(f"shift std {std} / max {max_shift} px: must not be negative")
    s = torch.randn(n, 2, generator=generator, dtype=torch.float64) * std
    if max_shift is not None and std > 0:
        if max_shift == 0:
            return torch.zeros(n, 2)
        for _ in range(1000):
            bad = s.norm(dim=1) > max_shift
            if not bool(bad.any()):
                break
            s[bad] = torch.randn(int(bad.sum()), 2, generator=generator, dtype=torch.float64) * std
        else:  # max_shift ≪ std: clip the stragglers onto the circle
            norm = s.norm(dim=1, keepdim=True)
            s = torch.where(norm > max_shift, s * (max_shift / norm), s)
    return s.float()

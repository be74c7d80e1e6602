"""Electron scattering factors of the elements (Peng et al. 1996, gemmi's ``c4322`` table).

Each element's factor is a sum of five Gaussians, ``f(k) = Σ_i a_i exp(−b_i k² / 4)`` with ``a`` in Å,
``b`` in Å² and ``k = |spatial frequency|`` in 1/Å; its inverse transform, the atom's Coulomb potential,
integrates to ``f(0) = Σ a_i``. The simulator's maps (:mod:`cryolens.simulate.density`) and the
Gaussian-mixture volumes built from atomic models (:mod:`cryolens.volumes.gaussian_mixture`) share these
tables, so a mixture from a model and a map simulated from it are in the same units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gemmi
import numpy as np
import torch

from ..errors import InputError


def default_blur(pixel_size: float) -> float:
    """Extra B-factor (Å²) ``2π² p²``: the narrowest Gaussian gets σ ≥ p/2 (simulate/density.py)."""
    return 2 * math.pi ** 2 * pixel_size ** 2


def form_factor_coefficients(elements: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Electron scattering coefficients ``(a (M, 5) Å, b (M, 5) Å²)`` of each element symbol
    (gemmi's ``Element(name).c4322``, Peng et al. 1996). Unknown symbols raise :class:`InputError`."""
    table: dict[str, tuple[list[float], list[float]]] = {}
    for e in set(elements):
        el = gemmi.Element(str(e))
        if el.atomic_number == 0 or el.name == "X":
            raise InputError(f"element {e!r}: unknown chemical element")
        c = el.c4322
        a, b = list(c.a), list(c.b)
        if not any(a):
            raise InputError(f"element {e!r}: no electron scattering factor tabulated")
        table[e] = (a, b)
    a = np.array([table[e][0] for e in elements], dtype=np.float64).reshape(-1, 5)
    b = np.array([table[e][1] for e in elements], dtype=np.float64).reshape(-1, 5)
    return a, b


def form_factor(elements: Sequence[str], k: torch.Tensor, bfactor: float = 0.0) -> torch.Tensor:
    """Electron scattering factor ``f(k) = Σ a_i exp(−(b_i + B) k² / 4)`` (Å) of each element at
    spatial frequencies ``k`` (1/Å, any shape). Returns ``(M, *k.shape)`` in ``k``'s dtype."""
    a, b = form_factor_coefficients(list(elements))
    a_t = torch.as_tensor(a, dtype=k.dtype, device=k.device)
    b_t = torch.as_tensor(b, dtype=k.dtype, device=k.device) + bfactor
    k2 = (k * k).reshape(1, 1, -1)
    f = (a_t[..., None] * torch.exp(-b_t[..., None] * k2 / 4)).sum(1)
    return f.reshape(len(a), *k.shape)

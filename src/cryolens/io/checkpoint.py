"""The one checkpoint format of every long run (EM iterations, training epochs).

A checkpoint is a ``dict`` of tensors, numbers, strings and nested dicts/lists (model and optimiser
``state_dict``s, RNG states, the iteration counter, a config), saved with :func:`torch.save` into
a temporary file and moved into place in one ``os.replace``: a run killed mid-write leaves the
previous checkpoint intact. :func:`rng_state` / :func:`set_rng_state` capture every random
generator a run uses so that a resumed run continues bit-for-bit on the CPU.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .files import atomic_path


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (``torch.save``); returns the path."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or unreadable file is an
    :class:`~cryolens.errors.InputError` naming it. Only tensors and plain containers are
    unpickled (``weights_only``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"{p}: not a readable cryolens checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    """The state of Python's, numpy's and torch's global generators (CPU, and CUDA when present)."""
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2],
             "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

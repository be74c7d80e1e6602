"""Checkpoints: atomic round trip, clear errors, RNG state restored bit-for-bit."""

import random

import numpy as np
import pytest
import torch

from cryolens.errors import InputError
from cryolens.io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip_and_errors(tmp_path):
    state = {"epoch": 3, "weights": torch.arange(5.0), "nested": {"lr": 1e-4, "hist": [1.0, 2.0]}}
    p = save_checkpoint(tmp_path / "ckpt.pt", state)
    back = load_checkpoint(p)
    assert back["epoch"] == 3 and torch.equal(back["weights"], state["weights"])
    assert back["nested"]["hist"] == [1.0, 2.0]
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.pt")


def test_rng_state_restores_every_generator(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])

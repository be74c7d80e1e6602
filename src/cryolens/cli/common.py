"""Small helpers shared by the command modules (device choice, argument checks)."""

from __future__ import annotations

import torch

from ..errors import InputError


def pick_device(name: str | None) -> torch.device:
    """``name`` if given, else CUDA when a GPU is seen, else the CPU."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_reference(volume: torch.Tensor, box: int, path: str) -> torch.Tensor:
    """Check a reference map's box matches the particles'."""
    if tuple(volume.shape) != (box, box, box):
        raise InputError(f"{path}: reference map is {tuple(volume.shape)}, particles need ({box}, {box}, {box})")
    return volume.float()

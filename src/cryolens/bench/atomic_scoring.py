"""Per-image scores of methods that output atomic models (``MethodOutputs.decode_models``: cryofold,
atomvae, e2gmm from a model): the Cα RMSD of each image's decoded model to the ground-truth model
of that image's state, after optimal superposition, beside the same RMSD of the model the method
started from (its base). A method that learned nothing scores its base's RMSD; one that recovered
each image's conformation scores ≈ 0.

Residues are paired by (chain, author residue number) on their Cα atoms, so a decoded model and
the simulator's ground-truth model need not list the same atoms in the same order (the simulator
writes what it simulated, the method what it was given); residues present in only one are left
out. The superposition removes the method's frame (a rotated reconstruction gives the same RMSD).
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from ..io.atomic import Atoms, read_atoms
from ..metrics.atomic import ca_by_residue, paired_ca, rmsd_superposed


def paired_ca_rmsd(model: Atoms | dict, truth: Atoms | dict, min_pairs: int = 3) -> float:
    """Cα RMSD (Å) after superposition over the residues both models have (paired by chain and
    residue number, :func:`cryolens.metrics.atomic.paired_ca`); NaN when fewer than ``min_pairs``
    residues are shared."""
    x, y = paired_ca(model, truth)
    return rmsd_superposed(x, y) if len(x) >= min_pairs else float("nan")


def per_image_ca_rmsd(decode_models: Callable[[torch.Tensor], list], latents: np.ndarray,
                      model_files: list[str | Path], labels: np.ndarray, base_model: str | Path | None = None,
                      n_images: int = 100, batch_size: int = 16, seed: int = 0,
                      device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Cα RMSD of the decoded model of ``n_images`` images (drawn without replacement, ``seed``) to
    the ground-truth model of each one's state.

    decode_models: ``z (B, L) float32 → B`` :class:`Atoms`. latents: ``(N, L)`` each image's ``z``.
    model_files: ground-truth model per state (``labels`` ``(N,)`` indexes it). base_model: the model
    the method started from, scored the same way against each image's truth (``base_rmsd``).
    Returns ``{"index": (n,), "rmsd": (n,), "base_rmsd": (n,) or absent}``, Å.
    """
    labels = np.asarray(labels)
    z_all = np.asarray(latents, dtype=np.float32)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(labels), min(n_images, len(labels)), replace=False))
    truths = [ca_by_residue(read_atoms(p)) for p in model_files]
    rmsd = np.empty(len(idx))
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        with torch.no_grad():
            models = decode_models(torch.as_tensor(z_all[chunk]).to(device or "cpu"))
        for j, (i, model) in enumerate(zip(chunk, models)):
            rmsd[start + j] = paired_ca_rmsd(model, truths[labels[i]])
    out = {"index": idx, "rmsd": rmsd}
    if base_model is not None:
        base = ca_by_residue(read_atoms(base_model))
        per_state = np.array([paired_ca_rmsd(base, t) for t in truths])
        out["base_rmsd"] = per_state[labels[idx]]
    return out

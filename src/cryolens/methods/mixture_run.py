"""A finished Gaussian-mixture run (``e2gmm``, ``cryofold``, ``atomvae``, ``multibody``) loaded back to decode maps
and models at any ``z`` (``cryolens eval-vol``). Not a recipe.

The recipes write ``model.json`` (recipe, box, pixel size, number of Gaussians, ``zdim``, options);
:func:`load_mixture_run` rebuilds the mixture with its decoder from it, loads their weights and the neutral
parameters from ``checkpoint.pt`` and, when the run was built from an atomic model, re-reads that model so
every atom moves with its Gaussian. A ``multibody`` run decodes its body maps (``bodies/body_NN.mrc``) moved by the
chains' motions at ``z`` (rows laid out as the run's ``z.npy``: :func:`~cryolens.inference.multibody.latent_motions`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import InputError
from ..inference.latent_model import TrainedModel
from ..io.atomic import load_model_for_box, residue_index
from ..io.checkpoint import load_checkpoint
from ..volumes.gaussian_mixture import GaussianMixtureVolume
from ..inference.multibody import latent_models, latent_motions, moved_maps
from ..io.mrc import read_volume
from ..volumes.mixture_decoder import MixtureDecoder, RigidGroupDecoder
from .config import as_dict

MIXTURE_RECIPES = ("e2gmm", "cryofold", "atomvae", "multibody")


def write_mixture_json(run, recipe: str, volume: GaussianMixtureVolume, n_images: int, config) -> None:
    """``model.json`` of a mixture run (module docstring)."""
    run.write_json("model.json", {"recipe": recipe, "box_size": volume.box_size, "pixel_size": volume.pixel_size,
                                  "n_images": n_images, "n_gaussians": volume.n_gaussians, "zdim": volume.zdim,
                                  "config": as_dict(config)})


def _decoder(recipe: str, n: int, cfg: SimpleNamespace, state: dict) -> torch.nn.Module:
    if recipe == "e2gmm":
        return MixtureDecoder(cfg.zdim, n, cfg.layers, cfg.hidden, cfg.dropout, True, cfg.vary_amplitudes)
    if getattr(cfg, "motion", "residues") == "chains":  # base, groups and origins come with the weights
        n_groups = state["volume.decoder.origins"].shape[0]
        return RigidGroupDecoder(cfg.zdim, torch.zeros(n, 3), torch.arange(n) % n_groups, cfg.dec_layers,
                                 cfg.dec_dim, shift_scale=cfg.max_shift)
    return MixtureDecoder(cfg.zdim, n, cfg.dec_layers, cfg.dec_dim, 0.0, False, False, cfg.max_shift)


def _body_maps(run: Path, device) -> torch.Tensor:
    """``(G, D, D, D)`` a multibody run's weighted body maps (``bodies/body_NN.mrc``, in order)."""
    files = sorted((run / "bodies").glob("body_*.mrc"))
    if not files:
        raise InputError(f"{run}: a multibody run without its body maps (bodies/body_NN.mrc)")
    return torch.stack([torch.as_tensor(read_volume(f)[0]) for f in files]).to(device)


def load_mixture_run(run_dir: str | Path, device=None) -> TrainedModel:
    """The run in ``run_dir`` ready to decode (``decode``: maps; ``model``: the mixture, whose
    ``atomic_models(z)`` gives moved models when the run had an atomic model)."""
    run = Path(run_dir)
    meta = json.loads((run / "model.json").read_text())
    if meta.get("recipe") not in MIXTURE_RECIPES:
        raise InputError(f"{run}: not a Gaussian-mixture run (recipe {meta.get('recipe')!r})")
    cfg = SimpleNamespace(**meta["config"])
    d, px, n = int(meta["box_size"]), float(meta["pixel_size"]), int(meta["n_gaussians"])
    state = load_checkpoint(run / "checkpoint.pt", map_location="cpu")["model"]
    volume = GaussianMixtureVolume(torch.zeros(n, 3), torch.zeros(n), torch.ones(n), d, px,
                                   _decoder(meta["recipe"], n, cfg, state), int(meta["zdim"]), learn=())
    volume.load_state_dict({k[len("volume."):]: v for k, v in state.items() if k.startswith("volume.")})
    if getattr(cfg, "model", None):
        atoms = load_model_for_box(cfg.model, d, px)
        per = getattr(cfg, "per", "residue")
        volume.atoms, volume.origin = atoms, atoms.center_of_mass()  # the recipes' centring (from_atoms)
        volume.atom_gaussian = residue_index(atoms) if per == "residue" else np.arange(len(atoms))
        if getattr(cfg, "frame_selection", ""):  # atomvae: maps and models in the frame its poses were written in
            volume.set_frame(volume.gaussians_of(cfg.frame_selection))
    dev = torch.device(device or "cpu")
    volume.to(dev).eval()
    z = np.load(run / "z.npy") if (run / "z.npy").is_file() else None

    bodies = _body_maps(run, dev) if meta["recipe"] == "multibody" else None

    def decode(zb: torch.Tensor | None) -> torch.Tensor:
        if zb is None:
            raise ValueError(f"{run}: this model needs z of dimension {volume.zdim}")
        if bodies is not None:
            with torch.no_grad():
                rot, t, shown = latent_motions(volume.decoder, zb.to(dev).float())
                return moved_maps(bodies, rot, t, volume.decoder.origins, px, shown)
        return volume.render(zb.to(dev).float())

    def decode_models(zb: torch.Tensor) -> list:
        return latent_models(volume, zb.to(dev)) if bodies is not None else volume.atomic_models(zb.to(dev).float())

    return TrainedModel(decode=decode, latents=z, pixel_size=px, box_size=d, config={**meta["config"],
                        "recipe": meta["recipe"]}, model=volume,
                        decode_models=decode_models if volume.atoms is not None else None)


def load_trained_run(run_dir: str | Path, device=None) -> TrainedModel:
    """Any trained run: a mixture run (:func:`load_mixture_run`) or a cryoDRGN-family one
    (:func:`~cryolens.methods.cryodrgn.load_trained`), by the recipe its ``model.json`` names."""
    from .cryodrgn import load_trained

    meta = Path(run_dir) / "model.json"
    if meta.is_file() and json.loads(meta.read_text()).get("recipe") in MIXTURE_RECIPES:
        return load_mixture_run(run_dir, device)
    return load_trained(run_dir, device)

"""Decode maps from a trained run at given latent values z (or the one map of a homogeneous run).

Writes vol_000.mrc, vol_001.mrc, ... (voxel size set) and z_values.txt into --out.

  cryolens eval-vol run/ --z "0.1,0.2,0,0,0,0,0,0" --out maps/
  cryolens eval-vol run/ --z-file z.txt --out maps/       (one z per line, whitespace or comma separated)
  cryolens eval-vol run/ --z-index 0 17 256 --out maps/   (the z of these particles, from z.npy)
  cryolens eval-vol run/ --z-index 0 17 --models --out m/  (a mixture run from a model: also models.cif)

With --models (e2gmm from a model, cryofold, atomvae) the moved atomic models at the same z are written as one
multi-model mmCIF, models.cif (model k ↔ vol_k), which ChimeraX and PyMOL open as a trajectory.
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by cryolens train")
    p.add_argument("--out", required=True, help="folder for the maps")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--z", action="append", default=[], help="one z, comma separated (repeatable)")
    g.add_argument("--z-file", help="text file of z values, one per line")
    g.add_argument("--z-index", type=int, nargs="+", help="particle indices whose z (z.npy) to decode")
    p.add_argument("--models", action="store_true", help="also write the moved atomic models (models.cif)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def read_z(args: argparse.Namespace, zdim: int, latents):
    """The ``(K, zdim)`` float32 array of z values asked for (``None`` for a homogeneous run); rows as wide as the
    run's ``z.npy`` are taken too (a multibody run's z is followed by its per-body presence)."""
    import numpy as np

    from ..errors import InputError

    if args.z:
        try:
            z = np.array([[float(v) for v in s.replace(" ", "").split(",") if v] for s in args.z])
        except ValueError:
            raise InputError(f"--z {args.z}: not comma-separated numbers") from None
    elif args.z_file:
        from ..io.files import require_file
        path = require_file(args.z_file, "z file")
        try:
            z = np.atleast_2d(np.loadtxt(path, delimiter="," if "," in path.read_text() else None, ndmin=2))
        except ValueError as e:
            raise InputError(f"{path}: not a table of numbers ({e})") from None
    elif args.z_index:
        if latents is None:
            raise InputError(f"{args.run}: no z.npy to take particle latents from")
        idx = np.asarray(args.z_index)
        if idx.min() < 0 or idx.max() >= len(latents):
            raise InputError(f"--z-index: particle indices must be in 0..{len(latents) - 1}")
        z = latents[idx]
    else:
        z = None
    if zdim == 0:
        if z is not None:
            raise InputError(f"{args.run}: a homogeneous run takes no z")
        return None
    if z is None:
        raise InputError(f"{args.run}: give --z, --z-file or --z-index (z of dimension {zdim})")
    widths = {zdim} | ({int(latents.shape[1])} if latents is not None else set())
    if z.ndim != 2 or z.shape[1] not in widths:
        raise InputError(f"z values have {z.shape[-1]} components; {args.run} was trained with zdim {zdim}")
    return z.astype(np.float32)


def main(args: argparse.Namespace) -> int:
    import torch

    from ..io.files import atomic_write_text
    from ..io.mrc import write_volume
    from ..io.runfolder import RunFolder
    from ..methods.mixture_run import load_trained_run
    from .common import pick_device

    device = pick_device(args.device)
    trained = load_trained_run(args.run, device)
    z = read_z(args, trained.model.zdim, trained.latents)
    if args.models:
        write_models_at(trained, z, args.run, args.out)
    out = RunFolder(args.out)
    maps = []
    if z is None:
        maps.append(trained.decode(None)[0])
    else:
        for s in range(0, len(z), 8):
            maps.extend(trained.decode(torch.from_numpy(z[s:s + 8])).cpu())
    for i, vol in enumerate(maps):
        write_volume(out.path(f"vol_{i:03d}.mrc"), vol.cpu().numpy(), trained.pixel_size)
    if z is not None:
        atomic_write_text(out.path("z_values.txt"), "\n".join(" ".join(f"{v:.6g}" for v in row) for row in z) + "\n")
    print(f"wrote {len(maps)} map(s) to {out.root}/ ({trained.box_size}³, {trained.pixel_size:g} Å/px)")
    return 0


def write_models_at(trained, z, run: str, out: str) -> None:
    """``out/models.cif``: the moved models of a mixture run at ``z (K, L)``; one line and exit 2 otherwise."""
    import torch

    from ..errors import InputError
    from ..io.atomic import write_models
    from ..io.runfolder import RunFolder

    if z is None or getattr(trained.model, "atoms", None) is None:
        raise InputError(f"{run}: --models needs a run built from an atomic model (e2gmm with --model, cryofold, "
                         "atomvae)")
    decode_models = trained.decode_models or trained.model.atomic_models
    write_models(RunFolder(out).path("models.cif"), decode_models(torch.from_numpy(z)))

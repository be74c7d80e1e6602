"""Analyse the latent space of a trained run: PCA, UMAP, k-means centres decoded to maps, maps along
principal components and along a graph path, plots coloured by per-image values, particle subsets.

Everything goes into RUN/analysis/ and RUN's report.html (see cryolens.analysis.latent).

  cryolens analyze run/
  cryolens analyze run/ --values data/ground_truth/ground_truth.npz:hinge_angle_deg --clusters 10
  cryolens analyze run/ --particles data/particles.star --subset-clusters 0,3
"""

from __future__ import annotations

import argparse


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by cryolens train")
    p.add_argument("--values", action="append", default=[], metavar="FILE[:KEY]",
                   help="per-image values to colour by: .npy, or .npz with :KEY (repeatable)")
    p.add_argument("--particles", help="the particles of the run (default: the input recorded in config.json)")
    p.add_argument("--clusters", type=int, default=20, help="k-means clusters (default 20)")
    p.add_argument("--pcs", type=int, default=2, help="principal components to traverse (default 2)")
    p.add_argument("--subset-clusters", action="append", default=[], metavar="K1,K2,...",
                   help="write the particles of these k-means clusters as a STAR/.cs subset (repeatable)")
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP embedding")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def _values(specs: list[str], n: int) -> dict:
    import numpy as np

    from ..errors import InputError
    from ..io.files import require_file

    out = {}
    for spec in specs:
        path, _, key = spec.partition(":")
        p = require_file(path, "values file")
        data = np.load(p)
        if p.suffix == ".npz":
            if not key or key not in data:
                raise InputError(f"{p}: give a key, one of {', '.join(data.files)} (as {p}:KEY)")
            v = data[key]
        else:
            v, key = data, key or p.stem
        if v.shape[0] != n:
            raise InputError(f"{p}: {v.shape[0]} values for {n} particles")
        out[key] = np.asarray(v, dtype=float)
    return out


def main(args: argparse.Namespace) -> int:
    from ..analysis.latent_run import analyze_latents
    from ..errors import InputError
    from ..io.dataset import read_particles
    from ..io.runfolder import RunFolder
    from ..methods.mixture_run import load_trained_run
    from .common import pick_device

    device = pick_device(args.device)
    arguments = RunFolder(args.run).read_json("config.json").get("arguments", {})
    if arguments.get("recipe") == "cryovaegan":
        return _analyze_2d(args, arguments, device)
    trained = load_trained_run(args.run, device)
    if trained.latents is None:
        raise InputError(f"{args.run}: no z.npy (a homogeneous run has no latent space)")
    run = RunFolder(args.run)
    particles = None
    source = args.particles or run.read_json("config.json").get("arguments", {}).get("input")
    if args.subset_clusters or args.particles:
        if not source:
            raise InputError(f"{args.run}: give --particles (config.json names no input)")
        particles = read_particles(source)
    subsets = [[int(k) for k in s.split(",") if k] for s in args.subset_clusters] or None
    analyze_latents(trained.latents, trained.decode, run, trained.pixel_size,
                              values=_values(args.values, len(trained.latents)) or None, particles=particles,
                              n_clusters=args.clusters, n_pcs=args.pcs, umap=not args.no_umap,
                              subset_clusters=subsets, device=device)
    if getattr(trained.model, "atoms", None) is not None:  # a mixture run from an atomic model: models too
        import numpy as np

        from ..analysis.writer import write_latent_models

        write_latent_models(lambda zb: trained.model.atomic_models(zb.to(device)), trained.latents,
                            run.path("analysis"), np.load(run.path("analysis") / "kmeans_centers.npy"), args.pcs)
    print(f"analysed {len(trained.latents)} latents of {args.run}: maps, plots and subsets in "
          f"{run.path('analysis')}/, report.html updated")
    return 0


def _analyze_2d(args: argparse.Namespace, arguments: dict, device) -> int:
    """A cryovaegan run (2D, no maps): the in-plane angle and defocus read off its latents, and the latent plots."""
    from ..analysis.vaegan_run import analyze_vaegan_run
    from ..errors import InputError
    from ..io.dataset import read_particles

    source = args.particles or arguments.get("input")
    if not source:
        raise InputError(f"{args.run}: give --particles (config.json names no input)")
    particles = read_particles(source)
    subsets = [[int(k) for k in s.split(",") if k] for s in args.subset_clusters] or None
    summary = analyze_vaegan_run(args.run, particles, _values(args.values, len(particles)) or None,
                                 n_clusters=args.clusters, n_pcs=args.pcs, umap=not args.no_umap,
                                 subset_clusters=subsets, device=device)
    truth = summary.get("inplane_circular_correlation")
    print(f"analysed {len(particles)} latents of {args.run}: in-plane angle and defocus read off z "
          f"(defocus Spearman {summary['defocus_spearman']:.3f}, angle circularity {summary['angle_circularity']:.3f}"
          + (f", circular correlation with the true in-plane angle {truth:.3f}" if truth is not None else "")
          + f"); analysis/readouts.npz, plots and report.html in {args.run}")
    return 0

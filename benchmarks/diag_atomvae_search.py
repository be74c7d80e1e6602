"""AtomVAE's pose search from a trained run: every image searched against the mixture at the mean z (one
group, the recipe's old search) and against the mixture at the k-means centre of its z's group
(:func:`cryolens.inference.pose_refine.refine_poses_by_latent`), scored against the simulator's poses: the
median rotation error after global alignment, overall and per true state (hinge angle); and the error in each
image's own frame ("gauge"): the decoded model at the image's z superposed on the true model of its state
(Kabsch on the residue Gaussians' centres and the true Cα), and the pose compared with the true pose composed
with that superposition — a decoder that turns the whole molecule with z moves the frame its poses are in, which
a single global alignment counts as pose error.

  cryolens train atomvae DATA/particles.star --out RUN --model DATA/ground_truth/model_000.pdb \\
      --set refine_poses=false ...
  OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/diag_atomvae_search.py RUN DATA --clusters 1 8 \
      [--levels 3] [--reference atoms|mixture] [--frame-selection A] [--truth-search]

``--reference`` and ``--frame-selection`` are the recipe's ``refine_reference`` and ``frame_selection`` applied to
the saved run; ``--truth-search`` adds the search against each state's true map. Prints the median per-image Cα
RMSD too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from cryolens.bench.atomic_scoring import per_image_ca_rmsd
from cryolens.inference.atomvae import hold_frame
from cryolens.inference.pose_refine import refine_poses, refine_poses_by_latent
from cryolens.io.checkpoint import load_checkpoint
from cryolens.io.dataset import read_particles
from cryolens.io.atomic import read_atoms
from cryolens.io.mrc import read_volume
from cryolens.io.star import read_star
from cryolens.imaging.rotations import geodesic_distance
from cryolens.methods.mixture_run import load_mixture_run
from cryolens.metrics.atomic import ca_by_residue, kabsch
from cryolens.metrics.pose_error import rotation_errors


def frames(volume, z: np.ndarray, data: Path, labels: np.ndarray) -> torch.Tensor:
    """``(N, 3, 3)``: per image, the rotation superposing the decoded residue centres at its ``z`` on the true
    Cα of its state's model (``ground_truth/model_<state>.pdb``)."""
    atoms = volume.atoms
    first = np.unique(volume.atom_gaussian, return_index=True)[1]
    keys = [(str(atoms.chain_ids[i]), int(atoms.residue_numbers[i])) for i in first]
    truth = {}
    out = np.zeros((len(z), 3, 3))
    for s in np.unique(labels):
        ca = ca_by_residue(read_atoms(data / "ground_truth" / f"model_{int(s):03d}.pdb"))
        keep = [j for j, k in enumerate(keys) if k in ca]
        truth[int(s)] = (keep, np.array([ca[keys[j]] for j in keep]))
    with torch.no_grad():
        centres = volume.params(torch.as_tensor(z, dtype=torch.float32))[0].double().numpy()
    for i, s in enumerate(labels):
        keep, q = truth[int(s)]
        out[i] = kabsch(centres[i, keep], q)[0]
    return torch.as_tensor(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--clusters", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--levels", type=int, default=None, help="refine_levels (default: the run's)")
    ap.add_argument("--reference", choices=("mixture", "atoms"), default="mixture",
                    help="search against the trained mixture's map, or its moved atoms' form-factor map")
    ap.add_argument("--truth-search", action="store_true",
                    help="also search each image against the true map of its state (the search's floor)")
    ap.add_argument("--frame-selection", default="", help="hold this part still (atomvae's frame_selection) first")
    args = ap.parse_args()
    torch.set_num_threads(1)
    trained = load_mixture_run(args.run)
    cfg = trained.config
    scale = load_checkpoint(args.run / "checkpoint.pt", map_location="cpu")["model"]["log_scale"].exp()
    particles = read_particles(args.data / "particles.star")
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    angle = np.load(args.data / "ground_truth" / "ground_truth.npz")["hinge_angle_deg"]
    settings = SimpleNamespace(refine_base_level=cfg["refine_base_level"],
                               refine_levels=args.levels or cfg["refine_levels"], refine_keep=cfg["refine_keep"],
                               refine_shift_step=cfg["refine_shift_step"], max_shift=cfg["max_shift_px"],
                               pose_batch=256, seed=cfg["seed"])
    volume, z = trained.model, trained.latents

    def render(zc: torch.Tensor) -> torch.Tensor:  # the recipe's refine_reference
        with torch.no_grad():
            return (volume.atom_maps(zc) if args.reference == "atoms" else volume.render(zc)) * scale

    poses = {"encoder": read_star(args.run / "particles.star").rotations.float()}
    if args.frame_selection:  # as the recipe does after training: every map in that frame, the poses follow
        poses["encoder"] = hold_frame(volume, z, poses["encoder"], torch.zeros(len(z), 2), args.frame_selection)[0]
    times = {}
    if args.truth_search:  # the search's floor: each image against the true map of its own state
        t0, labels = time.perf_counter(), np.load(args.data / "ground_truth" / "ground_truth.npz")["labels"]
        poses["truth_maps"] = torch.zeros(len(particles), 3, 3)
        for s in np.unique(labels):
            idx = np.nonzero(labels == s)[0]
            vol = torch.as_tensor(read_volume(args.data / "ground_truth" / f"volume_{int(s):03d}.mrc")[0])
            poses["truth_maps"][torch.as_tensor(idx)] = refine_poses(vol, blind, settings, "cpu", idx)[0]
        times["truth_maps"] = time.perf_counter() - t0
    for k in args.clusters:
        t0 = time.perf_counter()
        poses[f"k{k}"] = refine_poses_by_latent(render, z, blind, settings, "cpu", k)[0]
        times[f"k{k}"] = time.perf_counter() - t0
    result = {"n": len(particles), "levels": settings.refine_levels, "frame": args.frame_selection,
              "reference": args.reference,
              "time_s": times}
    g = frames(volume, z, args.data, np.load(args.data / "ground_truth" / "ground_truth.npz")["labels"])
    truth = particles.rotations.double()
    np.savez(args.run / "diag_search_poses.npz", frames=g.numpy(), **{k: v.numpy() for k, v in poses.items()})
    for name, r in poses.items():  # one global alignment (and mirror check) per pose set, then per state
        err = np.asarray(rotation_errors(r, particles.rotations), dtype=np.float64)
        per_state = {f"{a:.1f}": float(np.median(err[angle == a])) for a in np.unique(angle)}
        # in each image's frame: both composition orders, the convention's is the far smaller one
        own = [np.degrees(geodesic_distance(r.double(), c).numpy()) for c in (truth @ g, g.transpose(1, 2) @ truth)]
        own = min(own, key=np.median)
        result[name] = {"median_deg": float(np.median(err)), "per_state_median_deg": per_state,
                        "own_frame_median_deg": float(np.median(own)),
                        "own_frame_per_state": {f"{a:.1f}": float(np.median(own[angle == a]))
                                                for a in np.unique(angle)}}
        print(f"{name}: median {result[name]['median_deg']:.2f}°  per state "
              + ", ".join(f"{v:.1f}" for v in per_state.values())
              + f"; own frame {result[name]['own_frame_median_deg']:.2f}°  per state "
              + ", ".join(f"{v:.1f}" for v in result[name]["own_frame_per_state"].values()), flush=True)
    info = json.loads((args.data / "ground_truth" / "info.json").read_text())
    rmsd = per_image_ca_rmsd(volume.atomic_models, z, [str(args.data / "ground_truth" / f) for f in info["models"]],
                             np.load(args.data / "ground_truth" / "ground_truth.npz")["labels"],
                             cfg["model"], n_images=200)
    result["ca_rmsd_median_A"] = float(np.nanmedian(rmsd["rmsd"]))
    result["ca_rmsd_base_median_A"] = float(np.nanmedian(rmsd["base_rmsd"]))
    print(f"per-image Cα RMSD (200 images): median {result['ca_rmsd_median_A']:.2f} Å "
          f"(base model {result['ca_rmsd_base_median_A']:.2f} Å)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

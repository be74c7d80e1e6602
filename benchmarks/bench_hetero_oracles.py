"""What the hetero benchmark's data allow, with the truth's help: per-image FSC-AUC of reconstructions that are
given the true states (binned) or, for the swing, the true rigid motion of the moving chain.

For each task (profile ``default`` of ``bench/tasks/hetero.yaml`` unless ``--snr`` / ``--n`` change it; datasets from
the bench cache, simulated when absent):

- ``consensus``: the back-projection of all images (what the leaderboard's back-projection row scores);
- ``binned K``: the true states cut into K contiguous bins (continuous tasks) or K groups of states (discrete), each
  bin back-projected from its own images; every image scored against its own true map (100 images, seed 0);
- ``multibody (true motions)`` (swing only): chain B's rigid motion per state from the models (Kabsch on its atoms),
  both chains back-projected from every image in their own frames (``methods.multibody.body_maps`` with a decoder
  that returns the true motions), moved back per image (``inference.multibody.moved_maps``);
- ``multibody (true presence)`` (assembly only): every chain back-projected from the images whose state has it, the
  chains an image's state has summed (no motion).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_hetero_oracles.py --tasks swing-poses,anm-poses \
        [--snr 1] [--bins 3,6,10]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from cryolens.bench.suite import ensure_dataset, load_tasks, task_states
from cryolens.inference.multibody import moved_maps
from cryolens.io.dataset import read_particles
from cryolens.methods.backprojection import backproject
from cryolens.methods.multibody import body_maps
from cryolens.metrics.heterogeneity import per_image_fsc_auc
from cryolens.simulate.kinds import state_set


class TrueMotions:
    """A stand-in for a rigid-group decoder: ``rigid_moves(z)`` returns the true motion of state ``z[:, 0]``."""

    zdim = 1

    def __init__(self, rotations: torch.Tensor, translations: torch.Tensor, base, groups, origins):
        self.rot, self.t, self.base, self.groups, self.origins = rotations, translations, base, groups, origins

    def rigid_moves(self, z: torch.Tensor):
        k = z[:, 0].long()
        return self.rot[k], self.t[k], None


def swing_motions(spec: dict) -> TrueMotions:
    """Chain A still, chain B's rigid motion per state (Kabsch of its atoms onto state 0's), box frame."""
    st = state_set(spec["heterogeneity"])
    c0, m0 = st.centres[0], st.models[0]
    moving = m0.chain_ids == spec["heterogeneity"]["moving"]
    x0 = m0.coords[moving] - c0
    o = x0.mean(0)
    rots, ts = [], []
    for m in st.models:
        x = m.coords[moving] - c0
        u, _, vt = np.linalg.svd((x - x.mean(0)).T @ (x0 - o))
        rots.append(u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt)
        ts.append(x.mean(0) - o)
    k = len(st.models)
    rot = torch.eye(3).repeat(k, 2, 1, 1)
    rot[:, 1] = torch.as_tensor(np.array(rots), dtype=torch.float32)
    t = torch.zeros(k, 2, 3)
    t[:, 1] = torch.as_tensor(np.array(ts), dtype=torch.float32)
    base = torch.as_tensor(m0.coords - c0, dtype=torch.float32)
    groups = torch.as_tensor(moving.astype(np.int64))
    origins = torch.stack([base[groups == 0].mean(0), base[groups == 1].mean(0)])
    return TrueMotions(rot, t, base, groups, origins)


def assembly_presence(spec: dict) -> tuple[TrueMotions, torch.Tensor]:
    """No motion, one body per chain of the full complex (state 0, box frame), and each state's chains ``(K, G)``."""
    st = state_set(spec["heterogeneity"])
    m0 = st.models[0]
    chains = list(dict.fromkeys(m0.chain_ids))
    base = torch.as_tensor(m0.coords - st.centres[0], dtype=torch.float32)
    groups = torch.as_tensor([chains.index(c) for c in m0.chain_ids])
    origins = torch.stack([base[groups == g].mean(0) for g in range(len(chains))])
    k, g = len(st.models), len(chains)
    still = TrueMotions(torch.eye(3).repeat(k, g, 1, 1), torch.zeros(k, g, 3), base, groups, origins)
    shown = torch.tensor([[c in set(m.chain_ids) for c in chains] for m in st.models], dtype=torch.float32)
    return still, shown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="swing-poses,anm-poses,assembly-poses,mixture-poses")
    ap.add_argument("--snr", type=float, default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--bins", default="3,6,10")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for task in [t for t in load_tasks("hetero", profile="default") if t.name in args.tasks.split(",")]:
        if args.snr is not None:
            task.dataset["snr"] = args.snr
        if args.n is not None:
            task.dataset["n_images"] = args.n
        folder = ensure_dataset(task)
        labels = np.load(folder / "ground_truth" / "ground_truth.npz")["labels"]
        vols = task_states(task.dataset)[0].float()
        particles = read_particles(folder / "particles.star")
        k, n = vols.shape[0], len(labels)

        def auc(maps: torch.Tensor, group: np.ndarray) -> float:
            return float(per_image_fsc_auc(lambda z: maps[z[:, 0].long()], group[:, None].astype(np.float32), vols,
                                           labels, n_images=100).mean())

        row = {"task": task.name, "snr": task.snr, "n": n,
               "consensus": auc(backproject(particles, progress=False).volume[None], np.zeros(n, int))}
        continuous = task.heterogeneity == "continuous"
        for nb in (int(b) for b in args.bins.split(",")):
            group = (labels * nb) // k if continuous else labels % nb
            maps = torch.stack([backproject(particles.subset(np.flatnonzero(group == g)), progress=False).volume
                                for g in range(nb)])
            row[f"binned {nb}"] = auc(maps, group)
        if task.dataset["heterogeneity"].get("generator") == "swing":
            truth = swing_motions(task.dataset)
            z = labels[:, None].astype(np.float32)
            bodies = body_maps(particles, truth, z, 0.0, 2, "cpu", False)
            row["multibody (true motions)"] = float(per_image_fsc_auc(
                lambda zz: moved_maps(bodies, *truth.rigid_moves(zz)[:2], truth.origins, particles.pixel_size),
                z, vols, labels, n_images=100).mean())
        if task.dataset["heterogeneity"].get("generator") == "assembly":
            still, shown = assembly_presence(task.dataset)
            z = labels[:, None].astype(np.float32)
            bodies = body_maps(particles, still, z, 0.0, 2, "cpu", False, presence=shown[labels].bool().numpy())
            row["multibody (true presence)"] = float(per_image_fsc_auc(
                lambda zz: moved_maps(bodies, *still.rigid_moves(zz)[:2], still.origins, particles.pixel_size,
                                      shown[zz[:, 0].long()]), z, vols, labels, n_images=100).mean())
        rows.append(row)
        print(json.dumps(row))
    keys = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in ("task", "snr", "n")]
    print("| task | SNR | N | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[c]:.3f} ({r[c] / r['consensus'] - 1:+.0%})" if c in r else "—" for c in keys]
        print(f"| {r['task']} | {r['snr']:g} | {r['n']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

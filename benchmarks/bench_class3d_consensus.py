"""Two classes the way practitioners run them: a consensus refinement, then Class3D with the poses kept
(RELION's ``--skip_align``) — cryolens and RELION 3.1 from the same consensus poses and map, on several
structures (issue 27, item 5).

Two-state sets (`--models`, each made once and cached under benchmarks/_data/): two conformations of a bundled
real structure (`cryolens.simulate.bundled_model`), 50/50, the issue's imaging: D = 64, 1.5 Å/px (1.7 for
3HSY, whose dimer would not fit), SNR 0.1, CTF (1.0–2.5 µm, 500 Å astigmatism), shifts std 1.5 px (≤ 3 px),
uniform poses; the first --n images. The second conformation (`STATES`, generators of
`cryolens.simulate.kinds` and `simulate.motion`; its Cα RMSD to the first is reported):
- ``4e43``: chain B of the HIV-1 protease dimer turned 30° about the bundled hinge (`bundled_hinge`);
- ``1ake``: adenylate kinase's LID domain turned 45° about the real axis of its 1AKE → 4AKE opening;
- ``1pwc``: the DD-peptidase moved ±2 Å Cα RMSD along its lowest elastic-network (ANM) mode;
- ``3hsy``: chain B of the GluA2 N-terminal-domain dimer twisted 20° on its interface with chain A.

Per structure:
1. consensus: `inference.autorefine.auto_refine` (relion-refine3d, full posterior) from the mean of the
   two true maps low-passed to --consensus-lowpass Å, poses unknown, --max-iterations iterations (cached
   beside the dataset; its median rotation error after global alignment is reported); dataset and consensus
   use --seed, the Class3D runs of both programs each of --class-seeds.
2. cryolens: `methods.class3d.classify` with ``skip_align`` (K = 2, T = 4) from the consensus map
   low-passed to --lowpass Å, random first split, --iterations iterations; once per value of
   --reference-folds (``reference_folds``: 0 none, F ≥ 2 leave-fold-out class references).
3. RELION: `relion_refine --K 2 --skip_align --tau2_fudge 4 --ini_high LOWPASS --iter N --ctf` on the
   consensus STAR (its poses) with the consensus map as --ref.
Reported per structure: class accuracy (best of the two label matchings against the simulated state),
wall time of each program and their ratio (one row per --reference-folds value), per iteration: accuracy,
elapsed time, class priors, resolution and mean largest class posterior (RELION's from its ``run_itNNN_model.star``).

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_class3d_consensus.py --models 1ake,1pwc,3hsy \
      --n 2000 --threads 1 [--reference-folds 0,8] [--set minres_map=0] [--no-relion] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_abinit import DATA  # noqa: E402
from bench_class3d import accuracy, relion_labels  # noqa: E402

# the second conformation of each structure (a `cryolens.simulate.kinds` spec; 4e43: the bundled hinge), pixel size
# (Å) and RELION's --particle_diameter (Å: twice the farthest atom from the box centre, 35–47 Å, plus a margin)
STATES = {
    "4e43": ({"generator": "hinge", "model": "4E43", "angle_range": [0.0, 30.0]}, 1.5, 80),
    "1ake": ({"generator": "swing", "model": "1ake", "angle_range": [0.0, 45.0]}, 1.5, 80),
    "1pwc": ({"generator": "anm", "model": "1pwc", "mode": 0, "amplitude_range": [-2.0, 2.0]}, 1.5, 80),
    "3hsy": ({"generator": "swing", "model": "3hsy", "axis": "interface", "moving": "B", "fixed": "A",
              "angle_range": [0.0, 20.0]}, 1.7, 100),
}


def two_states(name: str) -> tuple[list, np.ndarray, float]:
    """``(the two atomic models, the box centre (Å), Cα RMSD between them (Å, paired by residue))``."""
    from cryolens.io.atomic import read_atoms
    from cryolens.metrics.atomic import backbone_ca, paired_ca
    from cryolens.simulate import bundled_hinge, bundled_model
    from cryolens.simulate.kinds import state_set

    spec = dict(STATES[name][0], n_states=2)
    if spec["generator"] == "hinge":
        atoms = read_atoms(bundled_model(spec["model"]))
        models, _ = bundled_hinge(atoms).trajectory(atoms, 2, tuple(spec["angle_range"]))
        centre = models[0].center_of_mass()
    else:
        states = state_set(spec)
        models, centre = states.models, states.centres[0]
    x, y = paired_ca(backbone_ca(models[0]), backbone_ca(models[1]))
    return models, centre, float(np.sqrt(((x - y) ** 2).sum(1).mean()))


def ensure_two_state(name: str, n: int, seed: int = 0) -> tuple[Path, float]:
    """The cached two-state dataset folder of ``name`` (``STATES``) with ``n`` images, and its Cα RMSD."""
    from cryolens.simulate import simulate_dataset, volumes_from_models

    models, centre, ca_rmsd = two_states(name)
    apix = STATES[name][1]
    out = DATA / f"class2_{name}_D64_apix{apix:g}_n{n}_snr0.1_seed{seed}"
    if not (out / "particles.star").is_file():
        vols = volumes_from_models(models, 64, apix, center=centre)
        simulate_dataset(out, vols, n, apix, 0.1, populations=[0.5, 0.5], shift_std=1.5, shift_max=3.0,
                         defocus_range=(10000.0, 25000.0), astigmatism=500.0, models=models, seed=seed,
                         progress=False, overwrite=True, notes={"states": STATES[name][0], "ca_rmsd_A": ca_rmsd})
    return out, ca_rmsd


def run_relion_skip_align(star: Path, ref: Path, work: Path, iterations: int, threads: int, lowpass: float,
                          seed: int, truth: np.ndarray | None = None,
                          diameter: float = 80.0) -> tuple[np.ndarray, float, list]:
    """relion_refine Class3D --skip_align; (0-based class per particle in input order, wall seconds,
    per iteration ``{"iteration", "elapsed_s", "accuracy", "class_prior", "resolution_A", "mean_max_weight"}``
    — elapsed from the start to the write of that iteration's ``run_itNNN_data.star``; accuracy against
    ``truth`` when given; the rest from its ``run_itNNN_model.star``)."""
    from cryolens.bench.relion import run_relion

    out = work / "relion"
    out.mkdir(parents=True, exist_ok=True)
    args = ["--i", star, "--o", out / "run", "--ref", ref, "--ini_high", lowpass, "--K", 2, "--iter", iterations,
            "--tau2_fudge", 4, "--skip_align", "--ctf", "--particle_diameter", diameter, "--sym", "C1", "--pad", 2,
            "--j", threads, "--pool", 3, "--dont_combine_weights_via_disc", "--random_seed", seed]
    t0, t0_epoch = time.perf_counter(), time.time()
    run_relion("relion_refine", args, cwd=work, timeout=6 * 3600)
    wall = time.perf_counter() - t0
    per_it = []
    for it in range(1, iterations + 1):
        f = out / f"run_it{it:03d}_data.star"
        row = {"iteration": it, "elapsed_s": f.stat().st_mtime - t0_epoch}
        if truth is not None:
            row["accuracy"] = accuracy(relion_labels(f, star), truth)
        per_it.append(dict(row, **relion_model_summary(out / f"run_it{it:03d}_model.star")))
    return relion_labels(out / f"run_it{iterations:03d}_data.star", star), wall, per_it


def relion_model_summary(path: Path) -> dict:
    """One RELION iteration's model: class priors (``rlnClassDistribution``), current resolution (Å) and
    the mean largest posterior (``rlnAveragePmax``)."""
    import starfile

    blocks = starfile.read(path, always_dict=True)
    general = blocks["model_general"]
    return {"class_prior": [float(x) for x in blocks["model_classes"]["rlnClassDistribution"]],
            "resolution_A": float(general["rlnCurrentResolution"]), "mean_max_weight": float(general["rlnAveragePmax"])}


def first_reaching(per_it: list, level: float) -> dict | None:
    """The first iteration whose accuracy is ≥ ``level`` and stays so in every later one."""
    for i, row in enumerate(per_it):
        if all(r["accuracy"] >= level for r in per_it[i:]):
            return row
    return None


def consensus(data: Path, particles, truth: np.ndarray, gt_vols: torch.Tensor, args) -> tuple[Path, Path, dict]:
    """Step 1, cached in ``data``: ``(consensus STAR, consensus map, its report)``."""
    from cryolens.inference.autorefine import RefineConfig, auto_refine, poses_to_particles
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import write_volume
    from cryolens.io.star import write_star
    from cryolens.metrics.pose_error import pose_error_summary

    folder = data / f"consensus_n{args.n}_it{args.max_iterations}_lp{args.consensus_lowpass:g}_seed{args.seed}"
    star, mapf, rep = folder / "consensus.star", folder / "consensus.mrc", folder / "report.json"
    if rep.is_file():
        report = json.loads(rep.read_text())
        report["reused"] = str(folder)
        err = pose_error_summary(read_particles(star).rotations, particles.rotations)
        print(f"consensus reused from {folder}: median rotation error {err['median_deg']:.2f}°", flush=True)
        return star, mapf, report
    blind = particles.subset(np.arange(len(particles)))
    blind.rotations, blind.shifts = None, None
    t0 = time.perf_counter()
    cfg = RefineConfig(initial_lowpass=args.consensus_lowpass, offset_range=3.0, offset_step=1.0, tau2_fudge=4.0,
                       max_iterations=args.max_iterations, seed=args.seed)
    ref = auto_refine(blind, gt_vols.mean(0), config=cfg, progress=False)
    err = pose_error_summary(ref.rotations, particles.rotations)
    per_state = [pose_error_summary(ref.rotations[truth == k], particles.rotations[truth == k])["median_deg"]
                 for k in (0, 1)]
    report = {"wall_s": time.perf_counter() - t0, "iterations": len(ref.history), "resolution_A": ref.resolution,
              "median_rotation_error_deg": err["median_deg"], "median_rotation_error_per_state_deg": per_state}
    print(f"consensus: {len(ref.history)} iterations, {ref.resolution:.2f} Å (half maps), median rotation error "
          f"{err['median_deg']:.2f}° (per state {per_state[0]:.2f}°, {per_state[1]:.2f}°), "
          f"{report['wall_s']:.0f} s", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_star(star, poses_to_particles(blind, {"rotations": ref.rotations, "shifts": ref.shifts,
                                                "half": torch.as_tensor(ref.half)}))
    write_volume(mapf, ref.volume.numpy(), particles.pixel_size)
    rep.write_text(json.dumps(report, indent=1))
    return star, mapf, report


def run_cryolens(posed, ref_volume: torch.Tensor, truth: np.ndarray, args, folds: int = 0) -> dict:
    """Step 2: cryolens Class3D ``skip_align`` with ``reference_folds = folds``; accuracy, wall (s, scoring between
    iterations not counted)."""
    from cryolens.methods.class3d import classify

    per_it: list = []
    paused = [0.0]
    t0 = time.perf_counter()

    def follow(it, r):
        t1 = time.perf_counter()
        per_it.append({"iteration": it, "elapsed_s": t1 - t0 - paused[0],
                       "accuracy": accuracy(r.labels.cpu().numpy(), truth),
                       "class_prior": r.class_prior.tolist(), "mean_max_weight": float(r.max_weight.double().mean())})
        paused[0] += time.perf_counter() - t1

    res = classify(posed, ref_volume, {"n_classes": 2, "n_iterations": args.iterations, "skip_align": True,
                                       "tau2_fudge": 4.0, "initial_lowpass": args.lowpass, "seed": args.class_seed,
                                       "batch_size": 256, "reference_folds": folds, **args.overrides},
                   progress=False,
                   on_iteration=follow)
    wall = time.perf_counter() - t0 - paused[0]
    for row, h in zip(per_it, res.history):
        row["resolution_A"] = h["resolution_A"]
    return {"accuracy": accuracy(res.labels, truth), "wall_s": wall, "per_iteration": per_it,
            "reached_0.95": first_reaching(per_it, 0.95), "class_prior": res.class_prior.tolist(),
            "history": res.history}


def run_structure(name: str, args) -> dict:
    """Steps 1–3 on one structure's two-state set."""
    from cryolens.io.dataset import read_particles
    from cryolens.io.mrc import read_volume
    from cryolens.simulate import read_ground_truth

    data, ca_rmsd = ensure_two_state(name, args.n_sim, args.seed)
    particles = read_particles(data / "particles.star").subset(np.arange(args.n))
    gt = read_ground_truth(data)
    truth = gt["labels"][:args.n].astype(int)
    gt_vols = torch.stack([torch.from_numpy(read_volume(f)[0].copy()) for f in gt["volume_files"]])
    print(f"== {name}: Cα RMSD between the states {ca_rmsd:.2f} Å, {args.n} images, "
          f"{particles.pixel_size:g} Å/px", flush=True)
    star, mapf, rep = consensus(data, particles, truth, gt_vols, args)
    posed = read_particles(star)
    ref_volume = torch.from_numpy(read_volume(mapf)[0].copy())
    work = Path(tempfile.mkdtemp(prefix=f"bench_class3d_consensus_{name}_"))
    row = {"model": name, "class_seed": args.class_seed, "ca_rmsd_A": ca_rmsd, "pixel_size": particles.pixel_size,
           "consensus": rep, "populations_true": np.bincount(truth, minlength=2).tolist(), "work": str(work)}
    row["cryolens_folds"] = {}
    for folds in args.reference_folds:
        c = row["cryolens_folds"][folds] = run_cryolens(posed, ref_volume, truth, args, folds)
        print(f"cryolens skip_align, reference_folds {folds}: accuracy {c['accuracy']:.4f}, {c['wall_s']:.0f} s, "
              f"populations {np.round(c['class_prior'], 3).tolist()}", flush=True)
    row["cryolens"] = row["cryolens_folds"][args.reference_folds[0]]
    if not args.no_relion:
        labels, wall_r, per_it_r = run_relion_skip_align(star, mapf, work, args.iterations, args.threads,
                                                         args.lowpass, args.class_seed, truth, STATES[name][2])
        row["relion"] = {"accuracy": accuracy(labels, truth), "wall_s": wall_r, "per_iteration": per_it_r,
                         "reached_0.95": first_reaching(per_it_r, 0.95),
                         "populations": (np.bincount(labels, minlength=2) / len(labels)).tolist()}
        row["time_ratio_cryolens_over_relion"] = row["cryolens"]["wall_s"] / wall_r
        print(f"RELION --skip_align: accuracy {row['relion']['accuracy']:.4f}, {wall_r:.0f} s", flush=True)
    runs = [(f"cryolens F={f}", c) for f, c in row["cryolens_folds"].items()] + [("relion", row.get("relion"))]
    for key, run in runs:
        if run is not None:
            print(key, " ".join(f"{r['iteration']}:{r['accuracy']:.3f}@{r['elapsed_s']:.0f}s"
                                for r in run["per_iteration"]))
            print(key, "class 1 prior / resolution (Å) / mean Pmax:", " ".join(
                f"{r['iteration']}:{r['class_prior'][0]:.2f}/{r['resolution_A']:.1f}/{r['mean_max_weight']:.2f}"
                for r in run["per_iteration"]))
    return row


def table(rows: list[dict]) -> str:
    """One Markdown line per structure: RMSD, consensus error, accuracy and wall of both, the ratio."""
    out = ["| structure | class seed | Cα RMSD | consensus median error | reference_folds | cryolens accuracy "
           "| RELION accuracy | cryolens wall | RELION wall | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = r.get("relion")
        acc_r, wall_r = (rel["accuracy"], rel["wall_s"]) if rel else (float("nan"), float("nan"))
        for folds, c in r["cryolens_folds"].items():
            out.append(f"| {r['model']} | {r['class_seed']} | {r['ca_rmsd_A']:.1f} Å "
                       f"| {r['consensus']['median_rotation_error_deg']:.1f}° "
                       f"| {folds} | {c['accuracy']:.4f} | {acc_r:.4f} | {c['wall_s']:.0f} s | {wall_r:.0f} s "
                       f"| {c['wall_s'] / wall_r:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="4e43,1ake,1pwc,3hsy", help=f"comma-separated, of {', '.join(STATES)}")
    ap.add_argument("--n", type=int, default=2000, help="images used (the first --n)")
    ap.add_argument("--n-sim", type=int, default=5000, help="images simulated (cached)")
    ap.add_argument("--lowpass", type=float, default=60.0, help="Class3D start-map low-pass (both programs), Å")
    ap.add_argument("--consensus-lowpass", type=float, default=30.0, help="consensus start-map low-pass, Å")
    ap.add_argument("--max-iterations", type=int, default=6, help="consensus refinement iterations (cap)")
    ap.add_argument("--iterations", type=int, default=25, help="Class3D iterations (both programs)")
    ap.add_argument("--reference-folds", type=lambda t: [int(x) for x in t.split(",")], default=[0],
                    help="comma-separated reference_folds values to run cryolens with (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="dataset and consensus seed")
    ap.add_argument("--class-seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                    help="comma-separated seeds of the Class3D runs of both programs (default: --seed)")
    ap.add_argument("--set", action="append", default=[],
                    help="cryolens Class3D option key=value (JSON value), for every cryolens run")
    ap.add_argument("--no-relion", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    names = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in STATES]
    if unknown:
        raise SystemExit(f"--models: {', '.join(unknown)} not among {', '.join(STATES)}")
    torch.set_num_threads(args.threads)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args), "structures": []}
    for name in names:
        for class_seed in args.class_seeds or [args.seed]:
            args.class_seed = class_seed
            result["structures"].append(run_structure(name, args))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    print(table(result["structures"]))


if __name__ == "__main__":
    main()

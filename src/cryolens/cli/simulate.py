"""Simulate a particle dataset with ground truth from atomic models (.pdb/.cif) or maps (.mrc).

Writes into --out: particles.mrcs, particles.star (RELION 3.1) and ground_truth/ (the maps of
every state, the atomic models used, per-image poses / shifts / CTF / state labels in
ground_truth.npz, and info.json). Noise is white Gaussian at --snr (variance of the noiseless
CTF-modulated images / noise variance, measured on a pilot pass of up to 1,000 images).

Heterogeneity (--motion): none (one input); discrete (several inputs, one state each, with
--populations); trajectory (several model files in order: each image also gets its position 0..1
along the list); hinge (one model: --n-states models turning a chain about a hinge over --angles;
for the bundled HIV-1 protease models chain B opens against chain A about the terminal β-sheet,
for other two-chain models give --hinge-chain/--hinge-fixed, or --hinge-axis and --hinge-pivot).

  cryolens simulate 4E43.pdb --out data/ --n 5000 --box 64 --apix 1.5 --snr 0.1
  cryolens simulate --model 4E43 --out hinge/ --motion hinge --n-states 20 --n 20000
  cryolens simulate open.pdb closed.pdb --out mix/ --populations 0.3 0.7
  cryolens simulate map.mrc --out data/ --n 2000 --snr 0.05 --shift-std 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")
_MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="MODEL_OR_MAP", help="atomic models (.pdb/.cif) or maps (.mrc)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--model", help="a bundled model instead of a file: 4E43 or 1hvr")
    p.add_argument("--n", type=int, default=5000, help="number of images (default 5000)")
    p.add_argument("--box", type=int, help="box size in px, even (default: 64 for models, the map's own box)")
    p.add_argument("--apix", type=float, help="pixel size in Å (default: 1.5 for models, the map's own)")
    p.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio (default 0.1; inf = no noise)")
    p.add_argument("--motion", choices=["none", "discrete", "trajectory", "hinge"],
                   help="heterogeneity (default: none for one input, discrete for several)")
    p.add_argument("--n-states", type=int, default=10, help="states along the hinge motion (default 10)")
    p.add_argument("--angles", type=float, nargs=2, metavar=("FIRST", "LAST"),
                   help="hinge angles in degrees (default 0 25)")
    p.add_argument("--hinge-chain", default="B", help="moving part: chain (B) or CHAIN:FIRST-LAST residues")
    p.add_argument("--hinge-fixed", default="A", help="chain the moving part turns against (default A)")
    p.add_argument("--hinge-axis", type=float, nargs=3, metavar=("X", "Y", "Z"), help="hinge axis direction")
    p.add_argument("--hinge-pivot", type=float, nargs=3, metavar=("X", "Y", "Z"), help="point on the axis, Å")
    p.add_argument("--populations", type=float, nargs="+", help="relative population of each state")
    p.add_argument("--shift-std", type=float, default=0.0, help="per-axis std of the shifts, px (default 0)")
    p.add_argument("--shift-max", type=float, help="largest shift, px (Gaussian truncated; default none)")
    p.add_argument("--defocus", type=float, nargs=2, default=[10000.0, 25000.0], metavar=("MIN", "MAX"),
                   help="mean defocus range, Å (default 10000 25000)")
    p.add_argument("--astigmatism", type=float, default=500.0, help="largest DefocusU − DefocusV, Å (default 500)")
    p.add_argument("--no-ctf", action="store_true", help="no CTF (projections only)")
    p.add_argument("--voltage", type=float, default=300.0, help="kV (default 300)")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration, mm (default 2.7)")
    p.add_argument("--q0", type=float, default=0.1, help="amplitude contrast (default 0.1)")
    p.add_argument("--blur", type=float, help="extra B-factor of the model maps, Å² (default 2π²·apix²)")
    p.add_argument("--use-bfactors", action="store_true", help="blur each atom by its own B-factor too")
    p.add_argument("--keep-waters", action="store_true", help="keep water molecules of the models")
    p.add_argument("--select", metavar="SEL",
                   help="keep only these atoms of every model: chains or residue ranges, e.g. A, A:1-50,C "
                        "(one monomer of a dimer makes a particle with no pseudo-symmetry)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=1000, help="images rendered and written at a time")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _kind(path: str) -> str:
    name = path.lower()
    if name.endswith(_MODEL_SUFFIXES):
        return "model"
    if name.endswith(_MAP_SUFFIXES):
        return "map"
    return "unknown"


def main(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import InputError
    from ..io.atomic import read_atoms
    from ..io.mrc import read_volume
    from ..simulate import (Hinge, bundled_hinge, bundled_model, dimer_hinge, resample_map, select_atoms,
                            simulate_dataset, volumes_from_models)
    from .common import pick_device

    inputs = list(args.inputs)
    bundled = args.model is not None
    if bundled:
        inputs.insert(0, str(bundled_model(args.model)))
    if not inputs:
        raise InputError("no input: give atomic models or maps, or --model 4E43")
    kinds = {p: _kind(p) for p in inputs}
    for p, k in kinds.items():
        if k == "unknown":
            raise InputError(f"{p}: unknown file type (expected .pdb/.cif model or .mrc map)")
    if len(set(kinds.values())) > 1:
        raise InputError("give either atomic models or maps, not both (they would not share a frame)")
    is_model = next(iter(kinds.values())) == "model"
    motion = args.motion or ("none" if len(inputs) == 1 else "discrete")
    if motion == "none" and len(inputs) > 1:
        raise InputError(f"--motion none takes one input, got {len(inputs)}")
    if motion == "hinge" and (len(inputs) != 1 or not is_model):
        raise InputError("--motion hinge takes exactly one atomic model")
    if args.select and not is_model:
        raise InputError("--select picks atoms of atomic models; the inputs are maps")
    if motion == "trajectory" and not is_model:
        raise InputError("--motion trajectory takes atomic model files")
    device = pick_device(args.device)
    notes: dict = {"inputs": inputs, "motion": motion}
    models = None
    state_values, state_name = None, "conformation"

    if is_model:
        box = 64 if args.box is None else args.box
        apix = 1.5 if args.apix is None else args.apix
        atoms = [read_atoms(p, waters=args.keep_waters) for p in inputs]
        if args.select:
            atoms = [a.subset(select_atoms(a, args.select)) for a in atoms]
            notes["select"] = args.select
        if motion == "hinge":
            if (args.hinge_axis is None) != (args.hinge_pivot is None):
                raise InputError("--hinge-axis and --hinge-pivot go together")
            if args.hinge_axis is not None:
                hinge = Hinge(args.hinge_chain, np.asarray(args.hinge_axis), np.asarray(args.hinge_pivot))
            elif bundled and args.hinge_chain == "B" and args.hinge_fixed == "A":
                hinge = bundled_hinge(atoms[0])
            else:
                hinge = dimer_hinge(atoms[0], args.hinge_chain, args.hinge_fixed)
            atoms, state_values = hinge.trajectory(atoms[0], args.n_states,
                                                   tuple(args.angles) if args.angles else None)
            state_name = "hinge_angle_deg"
            notes["hinge"] = {"selection": hinge.selection, "axis": hinge.axis.tolist(),
                              "pivot_A": hinge.pivot.tolist(), "angles_deg": state_values.tolist()}
        elif motion == "trajectory":
            state_values = np.linspace(0.0, 1.0, len(atoms)) if len(atoms) > 1 else np.zeros(1)
            state_name = "trajectory_coordinate"
        models = atoms
        volumes = volumes_from_models(atoms, box, apix, blur=args.blur, use_bfactors=args.use_bfactors,
                                      device=device)
        notes["blur_A2"] = args.blur if args.blur is not None else 2 * np.pi ** 2 * apix ** 2
    else:
        maps = [read_volume(p) for p in inputs]
        apix = maps[0][1] if args.apix is None else args.apix
        box = maps[0][0].shape[-1] if args.box is None else args.box
        volumes = [resample_map(v, px, box, apix) for v, px in maps]
        if motion == "trajectory":
            state_values, state_name = np.linspace(0.0, 1.0, len(maps)), "trajectory_coordinate"

    if args.populations is not None and len(args.populations) != len(volumes):
        raise InputError(f"--populations: {len(args.populations)} values for {len(volumes)} states")
    out = simulate_dataset(
        args.out, volumes, args.n, apix, args.snr, populations=args.populations, state_values=state_values,
        state_name=state_name, shift_std=args.shift_std, shift_max=args.shift_max,
        defocus_range=None if args.no_ctf else tuple(args.defocus), astigmatism=args.astigmatism,
        voltage=args.voltage, cs=args.cs, amplitude_contrast=args.q0, models=models, seed=args.seed,
        chunk_size=args.chunk_size, device=device, progress=not args.quiet, overwrite=args.force, notes=notes)
    n_states = len(volumes)
    print(f"simulated {args.n} images ({box} px, {apix:g} Å/px, SNR {args.snr:g}, {n_states} state"
          f"{'s' if n_states > 1 else ''}, motion: {motion})")
    print(f"wrote {Path(out) / 'particles.mrcs'}, {Path(out) / 'particles.star'} and {Path(out) / 'ground_truth'}/")
    return 0

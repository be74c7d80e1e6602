"""Heterogeneity that no consensus map can explain, built from the bundled real structures.

Each generator turns a spec (plain data, a task file's ``heterogeneity`` entry) into a
:class:`StateSet`: the ``K`` atomic models of the states, the centre each is placed on in the box,
an optional continuous coordinate per state, and the populations. ``generator`` names one of:

- ``swing`` (CryoBench's IgG-1D idea): one domain of a real structure turned rigidly about the real
  axis of its motion between two real conformations, through ``angle_range`` (degrees) in ``n_states``
  steps. The axis is the screw axis of the domain's rigid move from ``model`` to ``reference`` after
  the two are superposed on the ``fixed`` part (:func:`domain_motion_hinge`). Default: adenylate
  kinase, the LID domain (residues 122–159) of the closed form 1AKE about the axis of its opening to
  4AKE (CORE: residues 1–29, 60–121, 160–214; a 52° screw about that axis puts 1AKE's LID on 4AKE's to
  1.2 Å), 0 → 180°. With ``axis: interface`` the axis is instead that of a twist of one domain on its
  contact face with another (:func:`interface_twist_hinge`): the benchmark's swing turns one N-terminal
  domain of the 3HSY dimer (chain B, half the mass) on the dimer interface, because the LID (18 % of the
  mass) changes the map too little (benchmarks/RESULTS.md). The angle (``swing_angle_deg``) is the
  coordinate. Both are rigid rotations made to benchmark: the turned domain passes through its partner
  at some angles.
- ``assembly`` (Ribosembly's idea): compositions of a multi-chain complex (chains present), with
  skewed ``populations``; all in the full complex's frame (centred on its centre of mass).
- ``mixture`` (Tomotwin-100's idea): several distinct real structures, one per image, each centred on
  its own centre of mass; an entry is ``NAME`` or ``NAME:SELECTION`` (``"3hsy:A"``, selection syntax of
  :func:`cryolens.simulate.select_atoms`).
- ``anm``: an elastic-network normal-mode trajectory (:mod:`.anm`) of ``model`` along mode ``mode``
  through signed Cα RMSDs ``amplitude_range`` (Å; the coordinate ``anm_ca_rmsd_A``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..io.atomic import Atoms, read_atoms
from ..metrics.atomic import backbone_ca, kabsch, paired_ca
from .motion import Hinge, select_atoms

GENERATORS = ("swing", "assembly", "mixture", "anm")
ADK_LID, ADK_CORE = "A:122-159", "A:1-29,A:60-121,A:160-214"


@dataclass
class StateSet:
    """``models`` (K atomic models), ``centres (K, 3)`` Å (the point of each model put at the box
    centre), ``values (K,)`` continuous coordinate or None, ``value_name``, ``populations (K,)`` or None
    (uniform)."""

    models: list[Atoms]
    centres: np.ndarray
    values: np.ndarray | None = None
    value_name: str = "conformation"
    populations: list[float] | None = None
    parts: list[Atoms] | None = None  # an assembly's chains: state k's map is the sum of its parts' maps
    composition: list[list[int]] | None = None  # the parts of each state


@functools.lru_cache(maxsize=16)
def _read_file(path: str) -> Atoms:
    return read_atoms(path)


def _read(name: str) -> Atoms:
    """A bundled model by name or a file path, optionally ``NAME:SELECTION`` (one part of it); a copy (files
    are read once per process)."""
    from pathlib import Path

    from . import bundled_model

    base, _, sel = str(name).partition(":")
    atoms = _read_file(str(Path(base) if Path(base).suffix else bundled_model(base)))
    return atoms.subset(select_atoms(atoms, sel) if sel else np.ones(len(atoms), dtype=bool))


def _paired_ca(a: Atoms, b: Atoms, selection: str) -> tuple[np.ndarray, np.ndarray]:
    """Cα coordinates ``(m, 3)`` of ``selection`` in ``a`` and ``b``, paired by chain and residue number."""
    ca, cb = backbone_ca(a), backbone_ca(b)
    x, y = paired_ca(ca.subset(select_atoms(ca, selection)), cb.subset(select_atoms(cb, selection)))
    if len(x) < 3:
        raise InputError(f"selection {selection!r}: fewer than 3 Cα atoms in common between the two models")
    return x, y


def screw_axis(rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Axis of the rigid move ``x → R x + t``: ``(unit axis u, point p on it (Å), angle (degrees,
    right-handed about u))``, with ``p`` the point of the axis nearest the origin (Chasles)."""
    r = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])  # 2 sin θ · u
    angle = float(np.degrees(np.arctan2(np.linalg.norm(w) / 2, (np.trace(r) - 1) / 2)))
    if np.linalg.norm(w) < 1e-9:
        raise InputError("the domain does not rotate between the two models: no hinge axis")
    u = w / np.linalg.norm(w)
    t_perp = t - (t @ u) * u
    p = np.linalg.lstsq(np.vstack([np.eye(3) - r, u[None]]), np.concatenate([t_perp, [0.0]]), rcond=None)[0]
    return u, p, angle


def domain_motion_hinge(model: Atoms, reference: Atoms, moving: str, fixed: str) -> tuple[Hinge, float]:
    """The hinge that turns domain ``moving`` of ``model`` towards its place in ``reference``: both
    are superposed on the Cα of ``fixed`` (Kabsch), then the Kabsch move of ``moving`` from ``model``
    to the superposed ``reference`` gives the screw axis (:func:`screw_axis`) in ``model``'s frame.
    Returns ``(Hinge(selection=moving, axis, pivot), the real angle between the two (degrees))``."""
    fm, fr = _paired_ca(model, reference, fixed)
    r1, t1 = kabsch(fr, fm)  # reference → model frame on the fixed part
    mm, mr = _paired_ca(model, reference, moving)
    mr = mr @ r1.T + t1
    r2, t2 = kabsch(mm, mr)  # model's domain → reference's domain
    u, p, angle = screw_axis(r2, t2)
    return Hinge(selection=moving, axis=u, pivot=p, angle_range=(0.0, angle)), angle


def interface_twist_hinge(atoms: Atoms, moving: str, fixed: str, contact: float = 4.0) -> Hinge:
    """The twist of domain ``moving`` against ``fixed`` about their interface: the axis runs along the
    vector between the two domains' centroids (fixed → moving) through the centroid of the interface
    (the atoms of either part within ``contact`` Å of the other), so the moving domain spins on its
    contact face."""
    from scipy.spatial import cKDTree

    mov, fix = select_atoms(atoms, moving), select_atoms(atoms, fixed)
    xm, xf = atoms.coords[mov], atoms.coords[fix]
    near_m = np.array([len(v) > 0 for v in cKDTree(xf).query_ball_point(xm, contact)])
    near_f = np.array([len(v) > 0 for v in cKDTree(xm).query_ball_point(xf, contact)])
    if near_m.sum() + near_f.sum() < 4:
        raise InputError(f"{atoms.source or 'model'}: {moving} and {fixed} are not in contact")
    axis = xm.mean(0) - xf.mean(0)
    pivot = np.vstack([xm[near_m], xf[near_f]]).mean(0)
    return Hinge(selection=moving, axis=axis / np.linalg.norm(axis), pivot=pivot)


def _swing(spec: dict) -> StateSet:
    model = _read(spec.get("model", "1ake"))
    if spec.get("axis", "motion") == "interface":
        hinge = interface_twist_hinge(model, spec["moving"], spec["fixed"])
    else:
        reference = _read(spec.get("reference", "4ake"))
        hinge, _ = domain_motion_hinge(model, reference, spec.get("moving", ADK_LID), spec.get("fixed", ADK_CORE))
    lo, hi = spec.get("angle_range", [0.0, 180.0])
    models, deg = hinge.trajectory(model, int(spec["n_states"]), (float(lo), float(hi)))
    return StateSet(models, np.tile(model.center_of_mass(), (len(models), 1)), deg, "swing_angle_deg",
                    spec.get("populations"))


def _assembly(spec: dict) -> StateSet:
    full = _read(spec.get("model", "7pbl"))
    comps = spec.get("compositions")
    if not comps or len(comps) < 2:
        raise InputError("assembly: give at least two compositions (lists of chain IDs)")
    names = sorted({str(c) for chains in comps for c in chains})
    parts = [full.subset(select_atoms(full, c)) for c in names]
    composition = [sorted(names.index(str(c)) for c in set(map(str, chains))) for chains in comps]
    models = [full.subset(select_atoms(full, ",".join(str(c) for c in chains))) for chains in comps]
    centre = full.center_of_mass()
    return StateSet(models, np.tile(centre, (len(models), 1)), None, "composition", spec.get("populations"),
                    parts, composition)


def _mixture(spec: dict) -> StateSet:
    names = spec.get("models")
    if not names or len(names) < 2:
        raise InputError("mixture: give at least two models")
    models = [_read(n) for n in names]
    return StateSet(models, np.stack([m.center_of_mass() for m in models]), None, "structure",
                    spec.get("populations"))


def _anm(spec: dict) -> StateSet:
    from .anm import anm_trajectory

    model = _read(spec.get("model", "4ake"))
    lo, hi = spec.get("amplitude_range", [-4.0, 4.0])
    amps = np.linspace(float(lo), float(hi), int(spec["n_states"]))
    models, _ = anm_trajectory(model, int(spec.get("mode", 0)), amps, float(spec.get("cutoff", 15.0)))
    return StateSet(models, np.tile(model.center_of_mass(), (len(models), 1)), amps, "anm_ca_rmsd_A",
                    spec.get("populations"))


def state_set(spec: dict) -> StateSet:
    """The states of a heterogeneity spec with a ``generator`` (module docstring)."""
    gen = spec.get("generator")
    if gen not in GENERATORS:
        raise InputError(f"heterogeneity generator {gen!r} (choose from {', '.join(GENERATORS)})")
    states = {"swing": _swing, "assembly": _assembly, "mixture": _mixture, "anm": _anm}[gen](spec)
    pops = states.populations
    if pops is not None and len(pops) != len(states.models):
        raise InputError(f"{gen}: {len(pops)} populations for {len(states.models)} states")
    return states


def state_volumes(states: StateSet, box: int, pixel_size: float,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``(K, D, D, D)`` maps of the states, each model's ``centre`` at the box centre (voxel ``D // 2``). An
    assembly's maps are sums of its parts' maps (a map is a sum over atoms), each part computed once."""
    from .dataset import volumes_from_models

    if states.parts is not None and states.composition is not None:
        part_maps = volumes_from_models(states.parts, box, pixel_size, center=states.centres[0], device=device)
        return torch.stack([part_maps[idx].sum(0) for idx in states.composition])
    return torch.cat([volumes_from_models([m], box, pixel_size, center=c, device=device)
                      for m, c in zip(states.models, states.centres)])

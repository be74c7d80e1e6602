"""Benchmark tasks as data: a simulated dataset spec + what a method is given + what is scored.

A task file (``bench/tasks/*.yaml``, YAML) holds a ``base`` dataset spec, named ``heterogeneity``
variants, and either a ``grid`` (every combination of heterogeneity × poses known × SNR) or an
explicit ``tasks`` list (each entry a partial spec merged over ``base``)::

    base:  {model: 4E43, box: 32, pixel_size: 3.0, n_images: 1000, ctf: {defocus_range: [10000, 25000]}, ...}
    heterogeneity:
      homogeneous: {kind: homogeneous}
      discrete:    {kind: discrete, n_states: 3, populations: [0.5, 0.3, 0.2], angle_range: [0, 25]}
      continuous:  {kind: continuous, n_states: 20, angle_range: [0, 25]}
    grid: {heterogeneity: [homogeneous, discrete, continuous], poses_known: [true, false], snr: [1, 0.1, 0.01]}
    method_config: {cryodrgn: {epochs: 5}}          # optional: recipe options for this suite
    initial_model: {methods: [relion-refine3d], lowpass_A: 30}   # who gets the low-passed truth
    consensus_methods: [backprojection]   # homogeneous baselines also run on heterogeneous tasks

Dataset spec keys (all optional over ``base``): ``model`` (bundled name or path), ``box`` (D),
``pixel_size`` (Å), ``n_images``, ``snr``, ``seed``, ``shift_std``/``shift_max`` (px),
``poses`` (``{distribution: uniform}`` or ``{distribution: preferred, tilt_sigma_deg: 20}``: viewing
directions concentrated around the volume's z axis, in-plane angle uniform), ``ctf``
(``{defocus_range: [lo, hi] Å, astigmatism: Å}`` or ``null`` for no CTF), ``heterogeneity``
(``kind``: ``homogeneous``; ``discrete`` with ``n_states`` hinge states evenly spaced over
``angle_range`` (degrees, :func:`cryolens.simulate.bundled_hinge`) and ``populations``;
``continuous``: ``n_states`` states finely spaced along the hinge, uniform, each image's angle
recorded as its continuous coordinate). A heterogeneity entry with a ``generator`` (``swing``,
``assembly``, ``mixture``, ``anm``; :mod:`cryolens.simulate.kinds`) makes its states from the bundled
real structures instead, its ``kind`` (discrete or continuous) saying how it is scored.

Datasets are simulated once and cached under ``cache_dir/<hash>/`` where the hash is that of the
dataset spec (after ``--scale``), so tasks that differ only in what is known share one dataset.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import InputError
from ..methods.registry import Known
from ..simulate.kinds import GENERATORS

DEFAULT_SUITE = "default"
SCORES = ("fsc_gt", "fsc_halfmaps", "pose_error", "class_accuracy", "per_conformation_fsc", "per_image_fsc_auc",
          "latent_truth", "conformational_resolution", "conformational_clustering", "adjusted_mutual_information",
          "latent_spearman", "per_image_ca_rmsd")
_KINDS = ("homogeneous", "discrete", "continuous")
# which recipe heterogeneity may run on which task heterogeneity (a task may override it)
DEFAULT_METHOD_KINDS = {"homogeneous": ["homogeneous"], "discrete": ["discrete", "continuous"],
                        "continuous": ["continuous", "discrete"]}
DEFAULT_SCORES = {"homogeneous": ["fsc_gt", "fsc_halfmaps", "pose_error"],
                  "discrete": ["fsc_gt", "fsc_halfmaps", "pose_error", "class_accuracy", "per_conformation_fsc",
                               "per_image_fsc_auc", "conformational_clustering", "adjusted_mutual_information",
                               "per_image_ca_rmsd"],
                  "continuous": ["fsc_gt", "fsc_halfmaps", "pose_error", "per_image_fsc_auc", "latent_truth",
                                 "conformational_resolution", "conformational_clustering", "latent_spearman",
                                 "per_conformation_fsc", "per_image_ca_rmsd"]}


@dataclass
class Task:
    """One benchmark task: ``dataset`` (the spec, plain data), ``known`` (what a method is given),
    ``scores`` (metric names from :data:`SCORES`), ``method_kinds`` (recipe heterogeneities that
    may run on it)."""

    name: str
    dataset: dict
    known: Known
    scores: list[str]
    method_kinds: list[str]
    source: str = ""
    options: dict = field(default_factory=dict)

    @property
    def heterogeneity(self) -> str:
        return self.dataset.get("heterogeneity", {}).get("kind", "homogeneous")

    @property
    def snr(self) -> float:
        return float(self.dataset["snr"])

    def dataset_hash(self) -> str:
        """16 hex digits of the SHA-256 of the dataset spec (canonical JSON)."""
        return hashlib.sha256(json.dumps(self.dataset, sort_keys=True).encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {"name": self.name, "dataset": self.dataset, "known": {"poses": self.known.poses, "ctf": self.known.ctf},
                "scores": self.scores, "method_kinds": self.method_kinds, "source": self.source,
                "options": self.options}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(name=d["name"], dataset=d["dataset"], known=Known(**d["known"]), scores=list(d["scores"]),
                   method_kinds=list(d["method_kinds"]), source=d.get("source", ""), options=d.get("options", {}))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _snr_name(snr: float) -> str:
    return f"{snr:g}".replace(".", "p")


def _check_spec(spec: dict, where: str) -> dict:
    het = spec.setdefault("heterogeneity", {"kind": "homogeneous"})
    if het.get("kind") not in _KINDS:
        raise InputError(f"{where}: heterogeneity kind {het.get('kind')!r} (choose from {', '.join(_KINDS)})")
    for key in ("box", "pixel_size", "n_images", "snr"):
        if key not in spec:
            raise InputError(f"{where}: dataset spec lacks {key!r}")
    if int(spec["box"]) % 2:
        raise InputError(f"{where}: box {spec['box']} is odd")
    if not float(spec["snr"]) > 0:
        raise InputError(f"{where}: SNR {spec['snr']} must be positive")
    dist = spec.get("poses", {}).get("distribution", "uniform")
    if dist not in ("uniform", "preferred"):
        raise InputError(f"{where}: pose distribution {dist!r} (uniform or preferred)")
    gen = het.get("generator")
    if gen is not None and gen not in GENERATORS:
        raise InputError(f"{where}: heterogeneity generator {gen!r} (choose from {', '.join(GENERATORS)})")
    counted = gen in ("assembly", "mixture")  # their states are listed, not counted
    if het["kind"] != "homogeneous" and not counted and int(het.get("n_states", 0)) < 2:
        raise InputError(f"{where}: {het['kind']} heterogeneity needs n_states >= 2")
    return spec


def _make_task(name: str, spec: dict, known: dict, entry: dict, where: str) -> Task:
    spec = _check_spec(spec, f"{where}: task {name}")
    kind = spec["heterogeneity"]["kind"]
    scores = list(entry.get("scores", DEFAULT_SCORES[kind]))
    bad = [s for s in scores if s not in SCORES]
    if bad:
        raise InputError(f"{where}: task {name}: unknown scores {bad} (known: {', '.join(SCORES)})")
    given = Known(poses=bool(known.get("poses", True)), ctf=bool(known.get("ctf", True)))
    return Task(name=name, dataset=spec, known=given,
                scores=scores, method_kinds=list(entry.get("method_kinds", DEFAULT_METHOD_KINDS[kind])), source=where,
                options=dict(entry.get("options", {})))


def parse_tasks(doc: dict, where: str = "tasks") -> list[Task]:
    """Tasks of one parsed task file (module docstring)."""
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected a mapping with base / grid / tasks")
    base = doc.get("base", {})
    hets = doc.get("heterogeneity", {"homogeneous": {"kind": "homogeneous"}})
    # suite-wide options: recipe options per method, which methods get an initial model
    options = {k: doc[k] for k in ("method_config", "initial_model", "atomic_model", "consensus_methods",
                                   "pose_estimators_on_known_poses") if doc.get(k)}
    tasks: list[Task] = []
    grid = doc.get("grid")
    if grid:
        for h in grid.get("heterogeneity", ["homogeneous"]):
            if h not in hets:
                raise InputError(f"{where}: grid names heterogeneity {h!r}, not defined (have {', '.join(hets)})")
            for poses in grid.get("poses_known", [True]):
                for snr in grid.get("snr", [base.get("snr", 0.1)]):
                    spec = _merge(base, {"heterogeneity": hets[h], "snr": float(snr)})
                    name = f"{h}-{'poses' if poses else 'nopose'}-snr{_snr_name(float(snr))}"
                    entry = {**grid, "options": {**options, **(grid.get("options") or {})}}
                    tasks.append(_make_task(name, spec, {"poses": poses, "ctf": grid.get("ctf_known", True)},
                                            entry, where))
    for entry in doc.get("tasks", []) or []:
        if "name" not in entry:
            raise InputError(f"{where}: a task entry has no name")
        over = dict(entry.get("dataset", {}))
        h = entry.get("heterogeneity")
        if isinstance(h, str):
            if h not in hets:
                raise InputError(f"{where}: task {entry['name']}: heterogeneity {h!r} not defined")
            over["heterogeneity"] = hets[h]
        elif isinstance(h, dict):
            over["heterogeneity"] = h
        entry = {**entry, "options": {**options, **(entry.get("options") or {})}}
        tasks.append(_make_task(entry["name"], _merge(base, over), entry.get("known", {}), entry, where))
    names = [t.name for t in tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"{where}: duplicate task names {sorted(dup)}")
    return tasks


def _task_dir():
    return resources.files("cryolens.bench") / "tasks"


def builtin_suites() -> list[str]:
    """Names of the task files shipped in ``cryolens/bench/tasks``."""
    return sorted(p.name[:-5] for p in _task_dir().iterdir() if p.name.endswith(".yaml"))


def apply_profile(doc: dict, profile: str, where: str) -> tuple[dict, dict]:
    """A task file's document under one of its ``profiles`` (sizes for a machine), and the profile.

    A profile may hold ``base``, ``heterogeneity`` (by name) and ``method_config`` (by method), each
    merged over the file's own, plus ``dataset`` (merged over every task's dataset spec, after the task's
    own values) and ``pixel_size_factor`` (every task's pixel size times it: with ``box`` doubled and
    0.5, the same physical box at twice the sampling), ``budget_s`` and ``memory_mb`` (the wall-time and
    memory budgets per run it is sized for), ``jobs`` (runs at a time), ``halves`` (whether continuous
    methods are also fitted on two halves of the data) and ``score_times`` (seconds of the score against
    time): the CLI's defaults under that profile. ``default`` with no entry is the file as written."""
    profiles = doc.get("profiles") or {}
    if profile not in profiles and not (profile == "default" and profiles):
        have = ", ".join(profiles) or "none"
        raise InputError(f"{where}: no profile {profile!r} (profiles: {have})")
    prof = profiles.get(profile) or {}
    out = {k: v for k, v in doc.items() if k != "profiles"}
    for key in ("base", "heterogeneity", "method_config"):
        if prof.get(key):
            out[key] = _merge(out.get(key) or {}, prof[key])
    return out, prof


def _profile_tasks(tasks: list[Task], prof: dict, where: str) -> list[Task]:
    """``tasks`` with the profile's per-task ``dataset`` overrides and ``pixel_size_factor`` applied."""
    factor = float(prof.get("pixel_size_factor", 1.0))
    for t in tasks:
        for key in ("budget_s", "memory_mb", "jobs"):  # the profile's run budgets (the CLI's defaults)
            if prof.get(key):
                t.options[key] = float(prof[key])
        for key in ("halves", "score_times"):
            if key in prof:
                t.options[key] = prof[key]
        t.dataset = _merge(t.dataset, prof.get("dataset") or {})
        t.dataset["pixel_size"] = float(t.dataset["pixel_size"]) * factor
        _check_spec(t.dataset, f"{where}: task {t.name}")
    return tasks


def load_tasks(spec: str | os.PathLike, profile: str | None = None) -> list[Task]:
    """Tasks from a YAML file path or a built-in suite name (``default``, ``tiny``, ``hetero``, ...),
    under one of its ``profiles`` when ``profile`` is given (:func:`apply_profile`)."""
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise InputError(f"{p}: task file not found")
        text, where = p.read_text(), str(p)
    else:
        res = _task_dir() / f"{spec}.yaml"
        if not res.is_file():
            raise InputError(f"{spec}: neither a task file nor a built-in suite ({', '.join(builtin_suites())})")
        text, where = res.read_text(), f"{spec}.yaml"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{where}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if profile is None:
        return parse_tasks({k: v for k, v in doc.items() if k != "profiles"} if isinstance(doc, dict) else doc, where)
    doc, prof = apply_profile(doc if isinstance(doc, dict) else {}, profile, where)
    return _profile_tasks(parse_tasks(doc, where), prof, where)


def scale_task(task: Task, scale: float) -> Task:
    """The task with ``n_images × scale`` (the ``--scale`` knob: more data for bigger machines)."""
    if scale == 1:
        return task
    t = copy.deepcopy(task)
    t.dataset["n_images"] = max(16, int(round(int(t.dataset["n_images"]) * scale)))
    return t


def default_cache_dir() -> Path:
    """``$CRYOLENS_CACHE/bench`` or ``~/.cache/cryolens/bench``."""
    root = os.environ.get("CRYOLENS_CACHE")
    return Path(root) / "bench" if root else Path.home() / ".cache" / "cryolens" / "bench"


def _preferred_rotations(n: int, tilt_sigma_deg: float, generator: torch.Generator) -> torch.Tensor:
    """Views concentrated around the z axis: tilt ~ |N(0, σ)| (folded into [0, 180°]), rot and psi uniform."""
    from ..imaging.rotations import euler_to_matrix

    u = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 * math.pi
    tilt = (torch.randn(n, generator=generator, dtype=torch.float64) * math.radians(tilt_sigma_deg)).abs() % math.pi
    return euler_to_matrix(u[:, 0], tilt, u[:, 1]).float()


def model_path(spec: dict) -> Path:
    """The atomic model file a task's dataset is simulated from (``model``: a path, or the name of a
    bundled model): its state 0 (hinge angle 0) is the model as read, centred on its centre of mass. A
    heterogeneity with a generator uses its own ``model`` (a mixture: its first model; the file, without a
    ``:SELECTION``), if it has one."""
    from ..simulate import bundled_model

    het = spec.get("heterogeneity") or {}
    own = (het.get("model") or (het.get("models") or [None])[0]) if het.get("generator") else None
    model = str(own).partition(":")[0] if own else str(spec.get("model", "4E43"))
    return Path(model) if Path(model).suffix else bundled_model(model)


def task_states(spec: dict, device=None) -> tuple[torch.Tensor, list, np.ndarray | None, list[float] | None, str]:
    """``(volumes (K, D, D, D), models, state values (K,) or None, populations or None, name of the
    values)``: the hinge of the bundled model (angles in degrees), or a generator of
    :mod:`cryolens.simulate.kinds` when the heterogeneity names one."""
    from ..io.atomic import read_atoms
    from ..simulate import bundled_hinge, volumes_from_models
    from ..simulate.kinds import state_set, state_volumes

    het = spec["heterogeneity"]
    box, px = int(spec["box"]), float(spec["pixel_size"])
    if het.get("generator"):
        st = state_set(het)
        return state_volumes(st, box, px, device), st.models, st.values, st.populations, st.value_name
    model = str(spec.get("model", "4E43"))
    atoms = read_atoms(model_path(spec))
    if het["kind"] == "homogeneous":
        models, angles, pops = [atoms], None, None
    else:
        hinge = bundled_hinge(atoms) if "selection" not in het else None
        if hinge is None:
            raise InputError(f"model {model}: custom hinges are not supported in task files")
        lo, hi = het.get("angle_range", [0.0, 25.0])
        models, angles = hinge.trajectory(atoms, int(het["n_states"]), (float(lo), float(hi)))
        pops = het.get("populations")
    vols = volumes_from_models(models, box, px, center=atoms.center_of_mass(), device=device)
    return vols, models, angles, pops, "hinge_angle_deg"


def ensure_dataset(task: Task, cache_dir: str | os.PathLike | None = None, device=None, progress: bool = False) -> Path:
    """The cached dataset folder of ``task`` (simulated now if absent); see the module docstring."""
    from ..simulate.dataset import _generator, simulate_dataset

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / task.dataset_hash()
    if (out / "particles.star").is_file() and (out / "ground_truth" / "ground_truth.npz").is_file():
        return out
    spec = task.dataset
    vols, models, angles, pops, value_name = task_states(spec, device)
    n = int(spec["n_images"])
    seed = int(spec.get("seed", 0))
    rotations = None
    poses = spec.get("poses", {}) or {}
    if poses.get("distribution", "uniform") == "preferred":
        rotations = _preferred_rotations(n, float(poses.get("tilt_sigma_deg", 20.0)), _generator(seed, "rotations"))
    ctf = spec.get("ctf", {"defocus_range": [10000.0, 25000.0]})
    kwargs = {}
    if ctf is None:
        kwargs["defocus_range"] = None
    else:
        kwargs.update(defocus_range=tuple(ctf.get("defocus_range", [10000.0, 25000.0])),
                      astigmatism=float(ctf.get("astigmatism", 500.0)))
    simulate_dataset(out, vols, n, float(spec["pixel_size"]), float(spec["snr"]), populations=pops,
                     state_values=None if angles is None else angles, state_name=value_name,
                     rotations=rotations, shift_std=float(spec.get("shift_std", 0.0)),
                     shift_max=spec.get("shift_max"), models=models, seed=seed, device=device, progress=progress,
                     overwrite=True, notes={"task_spec": spec})
    info = {"spec": spec, "n_states": len(models), **state_distances(models)}
    (out / "spec.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out


def state_distances(models: list) -> dict:
    """How far apart the ground-truth states are, on the atomic models: RMSD (Å) after Kabsch
    superposition and the contact-map distance (8 Å, Cα) of each state to the first, and
    between the two extreme states. Empty for one state."""
    from ..metrics.atomic import backbone_ca, contact_map_distance, rmsd_superposed

    if len(models) < 2:
        return {}
    ca = [backbone_ca(m) for m in models]
    if len({len(c) for c in ca}) > 1:  # different molecules (a mixture, an assembly): no superposition
        return {}
    return {"states_rmsd_to_first_A": [rmsd_superposed(c, ca[0]) for c in ca],
            "states_contact_distance_to_first": [contact_map_distance(c, ca[0]) for c in ca],
            "extreme_states_rmsd_A": rmsd_superposed(ca[-1], ca[0])}

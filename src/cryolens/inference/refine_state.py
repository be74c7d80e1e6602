"""The typed options, state and result of auto-refinement (:mod:`~cryolens.inference.autorefine`), and the
checkpointed-state base the EM schedules share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from ..imaging.symmetry import cyclic_order
from ..io.particles import Particles


@dataclass
class RefineConfig:
    """Options of :func:`auto_refine` (module docstring). Angles in degrees, shifts in px, lengths in Å.

    pose_inference: ``"posterior"`` (RELION, full posterior) or ``"modal"`` (cryoSPARC / cryoDRGN2).
    healpix_order: first grid level of the search (RELION ``--healpix_order``; 2 = 15° coarse, 7.5°
    after oversampling: the GUI's "7.5°"). local_order: from this level on, local searches
    (RELION ``--auto_local_healpix_order``, default 4). max_order: finest level (the final oversampled
    step is ``angular_step(max_order + 1)``). local_range_steps: search radius of local searches in
    units of the level's angular step (Gaussian prior σ = step; RELION's is 2 steps, searching ±3σ).
    offset_range, offset_step: shift grid
    (RELION ``--offset_range``, ``--offset_step``: the command-line step, i.e. twice the GUI's).
    initial_lowpass: low-pass (Å) applied to the initial map (RELION ``--ini_high``); ``None``: none, the
    map's own resolution (:func:`~cryolens.imaging.grids.content_resolution`, where its power spectrum
    ends) sets the first E-step's shells.
    incr_size: shells above the current resolution used by the E-step. tau2_fudge: ``T``.
    mass, max_coarse, max_significant: significant sets (``--adaptive_fraction``); ``max_significant`` caps
    the last pass of global searches (a local one keeps every significant child,
    :func:`~cryolens.inference.pose_accuracy.last_pass_cap`).
    max_iterations: cap. min_gain_shells: resolution gain (in shells) below which an iteration stalls.
    pad: oversampling of the projector and the accumulator. batch_size: images per E-step batch (``None``:
    from the free memory, at most 64 on the CPU; :mod:`~cryolens.inference.memory`).
    keep: modal search, candidates kept per level. particle_diameter: Å (RELION's
    ``--particle_diameter``; default 0.8 × the box), sets the shell limit of the coarse passes
    (:func:`coarse_shell`, RELION's ``coarse_size``) when ``coarse_size``. seed: half-set split when
    the data has none. pose_estimate: the pose written per image (and centring the next local search):
    ``"map"``, the grid point of largest posterior weight (RELION's ``rlnAngleRot…``), or ``"mean"``, the
    posterior mean over the significant points (chordal mean of the rotations,
    :func:`~cryolens.imaging.rotations.weighted_mean_rotation`, and mean shift): off the grid, and
    closer to the truth where the posterior spans several grid steps. flatten_solvent: the E-step
    references are the MAP halves with the solvent outside a sphere of ``particle_diameter`` flattened
    to its mean through a ``mask_edge``-px cosine edge (RELION's ``--flatten_solvent``,
    ``--width_mask_edge``; the noise of the empty box no longer enters the likelihood). The reported
    FSC and the half maps written are unmasked. relax_symmetry: ``"C1"`` (none) or a cyclic group
    ``"Cn"`` whose mates the local searches also visit (module docstring; RELION 4 ``--relax_sym``).
    follow_accuracy: the sampling follows the measured pose accuracy (RELION's auto-refine): the local
    searches' prior σ is the larger of the level's step and the last iteration's expected angular accuracy,
    a stalled search whose oversampled step is already below 0.75 × that accuracy converges instead of
    refining, and a step above the accuracy (measured after an E-step, and before the next one on its
    reference) is refined without a stall, into local searches only once the poses have settled
    (``False``: σ = the step, refinement up to ``max_order`` on stalls only). accuracy_images: images per half
    on which the accuracy is measured each iteration (:mod:`~cryolens.inference.pose_accuracy`; 0: none,
    which also leaves the schedule as without ``follow_accuracy``). window_images: images per half whose
    local window's posterior mass is measured (diagnostic only; 0: none). posterior_sigma2: ``σ²`` on the
    E-step's shells from the posterior-weighted residual of every kept pair (RELION's), not the residual
    at the MAP pose alone (which, being the best of many candidates, fits the noise and underestimates
    ``σ²`` while the posteriors are broad); shells beyond ``k_max`` keep the MAP-pose residual.
    adaptive_caps: the significant-set caps follow the measured accuracy
    (:func:`~cryolens.inference.pose_accuracy.significant_caps`; up to 8 × ``max_coarse`` and
    ``max_significant``). Both cost time at low SNR (3.6× on the low-SNR test set) and are off by default.
    start_from_poses: the particles' rotations and shifts (a STAR's ``rlnAngle*``, ``rlnOrigin*``) are the
    starting poses — the centre of the first shift search and, with ``healpix_order ≥ local_order``, of the
    first local searches (RELION continuing a refinement); otherwise every search starts from none.
    reference_folds: ``K ≥ 2``: each half's images are aligned in ``K`` folds, each against its half's map
    made without that fold's images (:mod:`~cryolens.inference.fold_refs`: no image meets its own noise in
    its reference); ``0`` or ``1``: against the whole half's map (RELION).
    flat_local_prior: local searches weigh the poses inside their window by the likelihood alone (a prior
    centred on the image's own last estimate counts its data twice); ``False``: RELION's Gaussian prior on
    the angle to the last pose (σ: :func:`~cryolens.inference.refine_diag.local_sigma_deg`).
    solvent_fsc: the gold-standard FSC that is reported and sets the resolution, the next E-step's shells and
    the stall test is taken inside a soft mask made each iteration from the two half maps
    (:func:`~cryolens.imaging.masks.solvent_mask`; the particle's soft sphere while the halves are coarser than
    12 Å) and corrected for the mask by phase randomisation
    (:func:`~cryolens.metrics.fsc.fsc_solvent_corrected`; RELION's ``--solvent_correct_fsc``, with cryoSPARC's
    automatic mask instead of a user's). Unlike RELION, ``τ²`` still comes from the unmasked FSC: a prior read
    off the particle's signal-to-noise under-regularises the solvent (measured: the map against the truth got
    2 % worse in two iterations on 1PWC, issue 27). The unmasked resolution stays in the history.
    """

    pose_inference: str = "posterior"
    healpix_order: int = 2
    local_order: int = 4
    max_order: int = 5
    local_range_steps: float = 2.5
    offset_range: float = 5.0
    offset_step: float = 2.0
    initial_lowpass: float | None = None
    incr_size: int = 10
    tau2_fudge: float = 1.0
    mass: float = 0.999
    max_coarse: int = 16
    max_significant: int = 48
    max_iterations: int = 30
    min_gain_shells: float = 0.5
    pad: int = 2
    batch_size: int | None = None
    keep: int = 8
    particle_diameter: float | None = None
    coarse_size: bool = True
    seed: int = 0
    pose_estimate: str = "map"
    flatten_solvent: bool = True
    mask_edge: float = 5.0
    relax_symmetry: str = "C1"
    follow_accuracy: bool = True
    accuracy_images: int = 50
    window_images: int = 16
    posterior_sigma2: bool = False
    adaptive_caps: bool = False
    start_from_poses: bool = False
    reference_folds: int = 0
    flat_local_prior: bool = False
    solvent_fsc: bool = False

    def __post_init__(self):
        if self.pose_estimate not in ("map", "mean"):
            raise ValueError(f"pose_estimate must be 'map' or 'mean', got {self.pose_estimate!r}")
        if self.pose_inference not in ("posterior", "modal"):
            raise ValueError(f"pose_inference must be 'posterior' or 'modal', got {self.pose_inference!r}")
        cyclic_order(self.relax_symmetry)  # a clear error for anything but Cn
        if not 0 <= self.healpix_order <= self.max_order:
            raise ValueError(f"need 0 <= healpix_order <= max_order, got {self.healpix_order}, {self.max_order}")

    @classmethod
    def from_dict(cls, d: dict) -> RefineConfig:
        """From a dict, ignoring keys that are not options (``local_range``: the old name of
        ``local_range_steps``)."""
        names = {f.name for f in fields(cls)}
        d = {("local_range_steps" if k == "local_range" else k): v for k, v in d.items()}
        return cls(**{k: v for k, v in d.items() if k in names})



@dataclass
class RefineResult:
    """Outcome of :func:`auto_refine` for ``N`` images of box ``D``.

    volume: ``(D, D, D)`` float32 final map from both halves; half_maps: the two unfiltered half maps
    (RELION's ``_unfil``). fsc: ``(D//2+1,)`` their gold-standard FSC; resolution: its 0.143 crossing (Å).
    rotations: ``(N, 3, 3)`` MAP rotations (image → volume frame); shifts: ``(N, 2)`` px (particle centre
    relative to the image centre). half: ``(N,)`` int 0/1 half-set. history: one dict per iteration.
    converged: whether the schedule converged (else ``max_iterations`` ended it). relax_axis: the
    pseudo-symmetry axis ``(3,)`` ``(x, y, z)`` found on the initial map when ``relax_symmetry`` is ``Cn``.
    """

    volume: torch.Tensor
    half_maps: tuple[torch.Tensor, torch.Tensor]
    fsc: np.ndarray
    resolution: float
    rotations: torch.Tensor
    shifts: torch.Tensor
    half: np.ndarray
    history: list[dict]
    pixel_size: float
    converged: bool
    sigma2: tuple[torch.Tensor, torch.Tensor] = field(default=None)
    relax_axis: torch.Tensor | None = None


class CheckpointState:
    """A dataclass state saved as a checkpoint dict (:mod:`cryolens.io.checkpoint`): :meth:`to_dict` holds
    every field that is not ``None``; :meth:`from_dict` reads one back, ignoring unknown keys."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class RefineState(CheckpointState):
    """Everything one auto-refine iteration reads and writes (the checkpoint is :meth:`to_dict`).

    iteration: iterations done. volumes: the two MAP half maps ``(D, D, D)`` (next E-step references);
    unfiltered: the two weakly regularised half maps (RELION's ``_unfil``); full: the map of both halves.
    sigma2: per half ``(D//2+1,)`` noise power. rotations ``(N, 3, 3)``, shifts ``(N, 2)`` px: the current
    pose estimates; half: ``(N,)`` 0/1 half-set. order: current grid level; refinements: how often the
    search was refined; no_gain: iterations since the resolution last improved enough; best_shell: best
    resolution so far, in shells; k_max: the next E-step's shell limit; converged: the schedule ended.
    fsc: ``(D//2+1,)`` last gold-standard FSC; resolution: its 0.143 crossing, Å. history: one dict per
    iteration. config: the :class:`RefineConfig` as a dict. elapsed_s: wall time of the iterations.
    relax_ops ``(S, 3, 3)``, relax_axis ``(3,)``, relax_axis_score: symmetry relaxation (else ``None``).
    accuracy_deg: the last iteration's expected angular accuracy, degrees (``None`` before the first).
    fold_volumes: per half, ``(K, D, D, D)`` leave-fold-out MAP maps, the next E-step's references of its
    ``K = reference_folds`` folds (:mod:`~cryolens.inference.fold_refs`; ``None`` without folds or before the first).
    """

    iteration: int
    volumes: list
    full: torch.Tensor
    sigma2: list
    rotations: torch.Tensor
    shifts: torch.Tensor
    half: torch.Tensor
    order: int
    refinements: int
    no_gain: int
    best_shell: float
    k_max: int
    converged: bool
    fsc: torch.Tensor
    resolution: float
    history: list
    config: dict
    elapsed_s: float = 0.0
    unfiltered: list | None = None
    relax_ops: torch.Tensor | None = None
    relax_axis: torch.Tensor | None = None
    relax_axis_score: float | None = None
    accuracy_deg: float | None = None
    fold_volumes: list | None = None


def poses_to_particles(particles: Particles, state) -> Particles:
    """``particles`` with the refined rotations, shifts and ``rlnRandomSubset`` (1/2) of ``state`` (a
    :class:`RefineState`, :class:`RefineResult` or a dict with ``rotations``, ``shifts``, ``half``)."""
    get = state.get if isinstance(state, dict) else lambda k: getattr(state, k)
    extra = dict(particles.extra)
    extra["rlnRandomSubset"] = np.asarray(torch.as_tensor(get("half")).cpu()).astype(np.int64) + 1
    return replace(particles, rotations=get("rotations").float().cpu(), shifts=get("shifts").float().cpu(),
                   extra=extra)

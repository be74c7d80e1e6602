"""Gold-standard auto-refinement (RELION's Refine3D): full-posterior EM or modal EM over a pose grid —
a schedule over the EM core (what changes from one iteration to the next, :class:`RefineState`).

Each half-set ``h ∈ {1, 2}`` (``rlnRandomSubset``, or a seeded equal split) has its own map ``V_h``,
noise spectrum ``σ²_h(k)`` and poses; nothing of one half ever enters the other until the final map.
One iteration, per half:

**E-step** (:mod:`~cryolens.inference.oversampling`): ``pose_inference="posterior"`` (RELION) — the
posterior over ``(R, t)`` by adaptive oversampling on the SO(3) grid × a translation grid centred on the
image's previous shift, shells ``≤ k_max = shell(current resolution) + incr_size`` (RELION's
``--incr_size``), global searches up to ``local_order``, local ones (within ``local_range_steps``
angular steps, RELION's ``--auto_local_healpix_order``) after; ``"modal"`` (cryoSPARC / cryoDRGN2) —
only the mode, weight 1. With ``reference_folds = K`` each half is aligned in K folds, each against the half's
map made without that fold's sums (:mod:`.fold_refs`: no image meets its own noise in its reference).

**M-step** (:mod:`~cryolens.inference.mstep`, :mod:`~cryolens.inference.prior`): the kept pairs are
inserted with their weights on the pixels inside ``k_max``; the map is the MAP estimate under the
per-shell prior ``τ²(k)`` (:func:`~cryolens.inference.prior.tau2_from_fsc`, RELION's
``τ² = T · SSNR · σ²_rec``) read off the gold-standard FSC of this iteration's two *unfiltered* (weakly
regularised) half reconstructions. That FSC is the one reported and the one the schedule follows, and
the unfiltered halves are the half maps returned (RELION's ``_unfil``). The MAP halves serve only as the
next references: filtering both halves with a prior read off one shared FSC shrinks the shells beyond
the resolution by up to 10⁴, and there the little power that the crop, gridding correction and mask
leak from their shared low-resolution content correlates them (measured at SNR 0.01, D 32: FSC 0.3 at
every shell beyond 18 Å between the MAP halves, 0.0 between the unfiltered ones and between
``relion_reconstruct``'s halves from the same poses). ``σ²_h(k)`` is re-estimated
(:func:`~cryolens.inference.mstep.noise_power`) from the residual at each image's MAP pose under the
E-step reference (RELION weighs by the posterior; they agree once the posteriors are sharp).

**Symmetry relaxation** (``relax_symmetry = "Cn"``, RELION 4's ``--relax_sym``): local searches also
visit each pose's mates under the group whose axis is found on the initial map
(:func:`~cryolens.imaging.symmetry.symmetry_axis`); no map is ever symmetrized.

**Schedule** (:mod:`.refine_schedule`, RELION's auto-refine, simplified): the resolution (half-map
FSC = 0.143) sets ``k_max`` of the next E-step. A *stall* (too little resolution gain, poses no longer
moving by more than twice the step) refines the grid by one level: the angular step halves, the shift
step halves and the range narrows (``max(offset_range / 2^s, 3 · step)`` after ``s`` refinements). With
``follow_accuracy`` (docs/METHODS.md, "Auto-refine: sampling that follows the pose accuracy") the measured
expected angular accuracy (:mod:`.refine_diag`) widens the local prior to at least itself, stops refining
once the step is below 0.75 × it, and refines without a stall when the step is above it (each posterior
on one grid point) — measured after each E-step and, before the next, by a look-ahead on its reference.
A stall that cannot refine ends the run (converged) once the pose changes have stopped shrinking
(RELION's hidden-variable criterion), as does ``max_iterations``. The final map joins both halves' sums
with the full-set prior (``FSC_full = 2 FSC / (1 + FSC)``).

No user files are written here: ``on_iteration(state)`` lets the recipe write snapshots; with a run folder
``checkpoint.pt`` is saved after each iteration and ``resume=True`` continues to the uninterrupted result.

**Many processes** (``torchrun``, :mod:`~cryolens.inference.distributed`): each rank runs the E-step on its
share of each half-set; accumulators and noise sums are all-reduced before the M-step (every rank computes the
same maps); poses are merged. Rank 0 writes the (atomic) checkpoint, resumable with any number of ranks; one
rank calls ``on_iteration`` — rank 1 on rank 0's node (:func:`~.distributed.snapshot_writer`), so both writes
overlap — and no rank waits for them (the next all-reduce joins the ranks). The history's ``"timing"``: per
rank, the seconds of E-step, M-step, writes and collective waits (:mod:`.rank_timing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered
from ..imaging.grids import content_resolution, flatten_solvent, lowpass_volume, shell_index_2d, spherical_mask
from ..imaging.masks import solvent_mask
from ..imaging.rotations import geodesic_distance
from ..imaging.shift import phase_shift
from ..imaging.slice import extract_points_from_sampling_volume
from ..imaging.so3_grid import angular_step, grid_size, so3_grid
from ..imaging.symmetry import cyclic_operators, cyclic_order, symmetry_axis
from ..io.dataset import iterate_batches
from ..io.particles import Particles, half_set_labels
from ..metrics.fsc import fsc as fsc_curve, fsc_solvent_corrected, resolution_at
from .distributed import is_main, on_ranks, shard, snapshot_writer
from .memory import batch_size_for
from .mstep import InsertPixels, NoiseStats, initial_noise_spectrum, insert_pairs_on_pixels, weighted_residual_power
from .oversampling import Reference, Stage, coarse_shell, modal_pairs, posterior_mean_pose, posterior_pairs  # noqa: F401
from .prior import map_prior, tau2_from_fsc
from .rank_timing import RankTimer, TimingJoin
from .reconstruct import FourierAccumulator
from .fold_refs import fold_of, fold_out_maps, joined
from .pose_accuracy import last_pass_cap, significant_caps
from .refine_diag import PoseDiagnostics, accuracy_ahead, local_sigma_deg, Tally as _Tally
from .refine_schedule import next_schedule, shell_of
from .refine_state import RefineConfig, RefineResult, RefineState, poses_to_particles  # noqa: F401 (public here)

CHECKPOINT = "checkpoint.pt"
#: ``solvent_fsc``: the unmasked resolution (Å) from which the mask follows the map (cryoSPARC's default)
DYNAMIC_MASK_START = 12.0


def _stage(order: int, k_max: int, refinements: int, cfg: RefineConfig, size: int, pixel_size: float,
           accuracy: float | None = None) -> Stage:
    step = cfg.offset_step / 2 ** refinements
    rng = max(cfg.offset_range / 2 ** refinements, 3 * step) if refinements else cfg.offset_range
    diameter = _diameter(cfg, size, pixel_size)
    sigma = math.radians(local_sigma_deg(order, accuracy, cfg))
    return Stage(order=order, k_max=k_max, offset_range=rng, offset_step=step, local=order >= cfg.local_order,
                 local_range_rad=cfg.local_range_steps * sigma, size=size,
                 pixel_size=pixel_size, diameter=diameter if cfg.coarse_size else 0.0)


def _reference_map(volume: torch.Tensor, cfg: RefineConfig, size: int, pixel_size: float) -> torch.Tensor:
    """The E-step reference made from a half's map: solvent-flattened when ``cfg.flatten_solvent``."""
    if not cfg.flatten_solvent:
        return volume
    return flatten_solvent(volume, 0.5 * _diameter(cfg, size, pixel_size) / pixel_size, cfg.mask_edge)


def _batch_size(cfg: RefineConfig, stage: Stage, dev, n: int) -> int:
    """Images per E-step batch: ``cfg.batch_size``, or :func:`~cryolens.inference.memory.batch_size_for` a
    global pass of ``stage`` (its grid × the shift grid) on ``dev`` (at most 64 on the CPU)."""
    t = (2 * math.floor(stage.offset_range / stage.offset_step + 1e-9) + 1) ** 2  # shifts of the square grid
    return batch_size_for(dev, stage.size, grid_size(stage.order) * t, given=cfg.batch_size, n_images=n, n_shifts=t)


def _diameter(cfg: RefineConfig, size: int, pixel_size: float) -> float:
    """The particle diameter, Å: ``cfg.particle_diameter``, or 0.8 × the box."""
    return cfg.particle_diameter if cfg.particle_diameter else 0.8 * size * pixel_size


def _half_e_step(particles: Particles, state: RefineState, h: int, stage: Stage, cfg: RefineConfig, dev,
                 tally: _Tally, bar) -> tuple[list[FourierAccumulator], NoiseStats]:
    """E-step and M-step sums of half ``h`` over this rank's images: one accumulator per reference fold
    (:mod:`.fold_refs`; one without folds) and the noise sums (joined over the ranks by the caller, after both
    halves: a rank holding one half must not wait on the other)."""
    size, px = particles.box_size, particles.pixel_size
    half = state.half.cpu().numpy()
    members = np.nonzero(half == h)[0]
    n_folds = max(1, cfg.reference_folds)
    fold, held = fold_of(len(members), n_folds), state.fold_volumes
    accs, noise = [FourierAccumulator(size, cfg.pad, dev) for _ in range(n_folds)], NoiseStats(size, dev)
    ctx = (state.sigma2[h].to(dev), InsertPixels(size, stage.k_max, dev, torch.float32),
           shell_index_2d(size, device=dev))
    for f in range(n_folds):
        mine = shard(members[fold == f], h, 2)  # this rank's images of the fold (all in one process)
        tally.mine[mine] = True
        if not mine.size:  # (with an even number of ranks, half h is on ranks r ≡ h mod 2 only)
            continue
        vol = state.volumes[h] if held is None or len(held[h]) != n_folds else held[h][f]
        ref = Reference(_reference_map(vol.to(dev), cfg, size, px), cfg.pad, stage.k_max, len(members))
        for idx, images in iterate_batches(particles, cfg.batch_size, mine):
            _batch(particles, state, h, idx, images, ref, stage, cfg, accs[f], noise, ctx, tally)
            bar.update(len(idx))
    return accs, noise


def _batch(particles: Particles, state: RefineState, h: int, idx, images: torch.Tensor, ref: Reference, stage: Stage,
           cfg: RefineConfig, acc: FourierAccumulator, noise: NoiseStats, ctx: tuple, tally: _Tally) -> None:
    """One E-step batch of half ``h``: its posterior pairs inserted into ``acc``, its residual into ``noise``, its
    poses and statistics into ``tally``. ctx: the half's ``σ²``, insertion pixels and 2D shell indices."""
    s2, where, shells = ctx
    size, dev = particles.box_size, s2.device
    it = torch.as_tensor(idx)
    y = fft2_centered(images.to(dev))
    c = None if particles.ctf is None else ctf_2d(particles.ctf[it].to(dev), size, particles.pixel_size, device=dev)
    prev_r, prev_t = state.rotations[it].to(dev), state.shifts[it].to(dev)
    poses = (modal_pairs(y, c, s2, ref, stage, cfg) if cfg.pose_inference == "modal"
             else posterior_pairs(y, c, s2, ref, stage, prev_r, prev_t, cfg))
    sums = insert_pairs_on_pixels(acc, y, c, poses.image, poses.grid_index, poses.shift, poses.weight,
                                  lambda used, lv=poses.level, d=y: so3_grid(
                                      lv, device=d.device, dtype=d.real.dtype, indices=used), where)
    # σ²: residual at the MAP pose under the E-step reference, all shells; or posterior-weighted within k_max
    p = ref.slicer(poses.map_rotation)
    r = (phase_shift(y, -poses.map_shift) - (p if c is None else c * p)).abs().square().sum(0)
    if cfg.posterior_sigma2 and cfg.pose_inference == "posterior":
        r = torch.where(shells <= stage.k_max, 0.0, r.double()) + weighted_residual_power(
            y, *sums, lambda rr, pp: extract_points_from_sampling_volume(ref.sv, rr, size, pp), where)
    noise.add(r, y.shape[0])
    est_r, est_t = ((poses.map_rotation, poses.map_shift) if cfg.pose_estimate == "map"
                    else posterior_mean_pose(poses, y.shape[0]))
    tally.change[it] = torch.rad2deg(geodesic_distance(est_r.double(), prev_r.double())).cpu()
    tally.rotations[it] = est_r.float().cpu()
    tally.shifts[it] = est_t.float().cpu()
    tally.max_weight[it] = poses.max_weight.double().cpu()
    tally.n_significant[it] = poses.n_significant.double().cpu()
    if poses.kept_mass is not None:
        tally.kept_mass[it] = poses.kept_mass.double().cpu()
    tally.diag.sample(h, y, c, s2, ref, stage, est_r, prev_r, prev_t)


def _maps(accs: list[FourierAccumulator], sigma2: list[torch.Tensor], fudge: float, size: int, px: float,
          parts: list[list[FourierAccumulator]] | None = None, solvent: tuple | None = None) -> dict:
    """M-step maps: gold-standard FSC of weakly regularised halves → τ² → MAP halves; full map from both; with
    ``parts`` (each half's fold accumulators, ≥ 2), each half's leave-fold-out maps (:mod:`.fold_refs`) under
    the half's prior. With ``solvent`` (:func:`_solvent_curve`) the FSC reported is the solvent-corrected
    masked one (``solvent_fsc``); τ² still comes from the unmasked one. Under ``torchrun`` the five
    reconstructions are spread over the ranks."""
    nsh = size // 2 + 1
    dev = accs[0].device
    weights = [a.shell_weight() for a in accs]

    def weak_map(h: int) -> torch.Tensor:
        return accs[h].reconstruct(1e-3 * weights[h].mean() * torch.ones(nsh, dtype=torch.float64, device=dev))

    weak = on_ranks([lambda: weak_map(0), lambda: weak_map(1)], dev)
    # shells beyond the E-step's band hold no data, only what the crop and mask leak: no correlation
    data = ((weights[0] > 0) & (weights[1] > 0)).cpu().numpy()
    raw = np.where(data, fsc_curve(weak[0], weak[1]), 0.0)
    res_raw = float(resolution_at(raw, 0.143, px, size))
    curve = raw if solvent is None else np.where(data, _solvent_curve(weak, raw, res_raw, solvent, size, px), 0.0)
    f_full = 2 * raw / (1 + np.clip(raw, -0.999, None))  # τ² always from the whole box (solvent_fsc: docstring)
    s2_full = 0.5 * (sigma2[0] + sigma2[1])
    tau2s = [tau2_from_fsc(raw, sigma2[h], weights[h], fudge) for h in (0, 1)]
    priors = [map_prior(sigma2[h], tau2s[h])[0] for h in (0, 1)]

    def map_half(h: int) -> torch.Tensor:
        return accs[h].reconstruct(priors[h]).float()

    def full_map() -> torch.Tensor:
        merged = accs[0].merged(accs[1])
        return merged.reconstruct(map_prior(s2_full, tau2_from_fsc(f_full, s2_full, merged.shell_weight(), fudge))[0])

    *volumes, full = on_ranks([lambda: map_half(0), lambda: map_half(1), full_map], dev)
    folds = (None if parts is None or len(parts[0]) < 2
             else [fold_out_maps(accs[h], parts[h], priors[h]) for h in (0, 1)])
    return {"volumes": [v.cpu() for v in volumes], "unfiltered": [v.float().cpu() for v in weak],
            "tau2": tau2s[0],  # half 1's prior power, for the diagnostic
            "fold_volumes": folds, "full": full.float().cpu(), "curve": curve,
            "resolution": res_raw if solvent is None else float(resolution_at(curve, 0.143, px, size)),
            "resolution_unmasked": res_raw}


def _solvent_curve(weak: list[torch.Tensor], raw: np.ndarray, res_raw: float, solvent: tuple, size: int,
                   px: float) -> np.ndarray:
    """``solvent_fsc``'s curve: the halves' FSC inside a mask, corrected by phase randomisation (seed, radius px,
    edge px = ``solvent``; ``raw``, ``res_raw``: their unmasked FSC and its 0.143 resolution, Å). The mask is
    made from the halves (:func:`~cryolens.imaging.masks.solvent_mask`) once ``res_raw`` is finer than
    ``DYNAMIC_MASK_START``, before that the particle's soft sphere: an envelope drawn from noisy low-resolution
    halves would carry their noise into the FSC."""
    seed, radius, edge = solvent
    if res_raw <= DYNAMIC_MASK_START:
        mask = solvent_mask(0.5 * (weak[0] + weak[1]), px)
    else:
        mask = spherical_mask(size, radius, edge, weak[0].device)
    return fsc_solvent_corrected(weak[0], weak[1], mask, seed=seed, unmasked=raw)


def _look_ahead(particles: Particles, state: RefineState, cfg: RefineConfig, dev) -> tuple[RefineState, float]:
    """Before an E-step but the first: the accuracy it will have (:func:`~.refine_diag.accuracy_ahead`, half 1),
    and the state refined while that is below the oversampled step (each posterior would sit on one point)."""
    if not (cfg.follow_accuracy and cfg.accuracy_images and state.iteration > 0):
        return state, float("nan")
    idx = np.nonzero(state.half.numpy() == 0)[0][:cfg.accuracy_images]
    ref = Reference(_reference_map(state.volumes[0].to(dev), cfg, particles.box_size, particles.pixel_size),
                    cfg.pad, state.k_max)
    acc = accuracy_ahead(particles, ref, state.sigma2[0], state.rotations, idx, state.k_max, cfg.seed + state.iteration,
                         dev)
    last = state.history[-1]  # not into the local searches before the poses have settled (refine_schedule)
    settled = last["median_pose_change_deg"] <= 2 * last["angular_step_deg"] or state.order >= cfg.local_order
    while (math.isfinite(acc) and acc < angular_step(state.order + 1) and state.order < cfg.max_order
           and (settled or state.order + 1 < cfg.local_order)):
        state = replace(state, order=state.order + 1, refinements=state.refinements + 1, no_gain=0)
    return state, acc


def _iteration(particles: Particles, state: RefineState, cfg: RefineConfig, dev, progress: bool,
               timer: RankTimer) -> RefineState:
    """One EM iteration over both halves; returns the new state (module docstring). timer: this rank's
    E-step and M-step seconds are counted into it."""
    size, px, n = particles.box_size, particles.pixel_size, len(particles)
    state, ahead = _look_ahead(particles, state, cfg, dev)
    stage = _stage(state.order, state.k_max, state.refinements, cfg, size, px, state.accuracy_deg)
    stage.mates = state.relax_ops
    stage.caps = (cfg.max_coarse, last_pass_cap(stage.local, cfg.max_coarse, cfg.max_significant))
    if cfg.adaptive_caps and state.accuracy_deg is not None and math.isfinite(state.accuracy_deg):
        stage.caps = significant_caps(state.accuracy_deg, stage.order, cfg.max_coarse, cfg.max_significant)
    ecfg = replace(cfg, max_coarse=stage.caps[0], max_significant=stage.caps[1],  # the E-step's caps, batch
                   batch_size=_batch_size(cfg, stage, dev, n))
    nan = torch.full((n,), float("nan"), dtype=torch.float64)
    tally = _Tally(state.rotations.clone(), state.shifts.clone(), nan, torch.zeros(n, dtype=torch.float64),
                   torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool), nan.clone(),
                   PoseDiagnostics(cfg.accuracy_images, cfg.window_images, cfg.seed + state.iteration))
    seen = sum(len(shard(np.nonzero(state.half.numpy() == h)[0], h, 2)) for h in (0, 1))  # this rank's images
    bar = tqdm(total=seen, desc=f"iter {state.iteration + 1} (order {stage.order}, "
               f"{'local' if stage.local else 'global'}, k≤{stage.k_max})", unit="img", disable=not progress)
    with timer.part("estep_s"):
        parts, noises = zip(*[_half_e_step(particles, state, h, stage, ecfg, dev, tally, bar) for h in (0, 1)])
    bar.close()
    for ps, noise in zip(parts, noises):  # the ranks' sums joined (no-op in one process)
        for acc in ps:
            acc.all_reduce()
        noise.all_reduce()
    sigma2 = [noise.estimate().float() for noise in noises]
    tally.merge()
    with timer.part("mstep_s"):
        accs = [joined(list(ps)) for ps in parts]
        maps = {**_maps(accs, list(sigma2), cfg.tau2_fudge, size, px, [list(ps) for ps in parts],
                        (cfg.seed + state.iteration, 0.5 * _diameter(cfg, size, px) / px, cfg.mask_edge)
                        if cfg.solvent_fsc else None), "sigma2": sigma2}
    sched = next_schedule(state, stage, maps, tally, cfg, size, px)
    sched["history"][-1]["accuracy_ahead_deg"] = ahead
    return replace(state, iteration=state.iteration + 1, volumes=maps["volumes"], unfiltered=maps["unfiltered"],
                   full=maps["full"], fold_volumes=maps["fold_volumes"], sigma2=[s.cpu() for s in sigma2],
                   rotations=tally.rotations,
                   shifts=tally.shifts, fsc=torch.as_tensor(np.asarray(maps["curve"])),
                   resolution=maps["resolution"], **sched)


def _initial_state(particles: Particles, initial_volume: torch.Tensor, cfg: RefineConfig, dev) -> RefineState:
    size, px = particles.box_size, particles.pixel_size
    if tuple(initial_volume.shape) != (size, size, size):
        raise InputError(f"initial map is {tuple(initial_volume.shape)}, the particles need ({size}, {size}, {size})")
    vol = initial_volume.detach().to(device=dev, dtype=torch.float32)
    if cfg.initial_lowpass:
        vol = lowpass_volume(vol, float(cfg.initial_lowpass), px)
    # without a low-pass, the map's own resolution (where its spectrum ends) sets the first E-step's shells
    start_res = float(cfg.initial_lowpass) if cfg.initial_lowpass else content_resolution(vol, px)
    half = torch.as_tensor(half_set_labels(particles, cfg.seed))
    if int(half.min()) == int(half.max()):
        raise InputError(f"{particles.name}: every particle is in one half-set (rlnRandomSubset); need both")
    sigma2 = [s.cpu() for s in on_ranks([lambda h=h: initial_noise_spectrum(  # half h's on one rank (no rank idles)
        particles, np.nonzero(half.numpy() == h)[0], device=dev) for h in (0, 1)], dev)]
    n_sym = cyclic_order(cfg.relax_symmetry)
    relax = {}
    if n_sym > 1:  # the pseudo-symmetry axis, in the initial map's frame
        axis, score = symmetry_axis(vol.cpu(), n_sym)
        relax = {"relax_ops": cyclic_operators(n_sym, axis).float(), "relax_axis": axis.float(),
                 "relax_axis_score": score}
    shell = shell_of(start_res, size, px)
    n = len(particles)
    rot, shifts = torch.eye(3).repeat(n, 1, 1), torch.zeros(n, 2)
    if cfg.start_from_poses:  # RELION continuing from a STAR's angles and origins
        if particles.rotations is None:
            raise InputError(f"{particles.name}: start_from_poses needs poses (rlnAngleRot/Tilt/Psi) in the input")
        rot = particles.rotations.float().cpu().clone()
        shifts = shifts if particles.shifts is None else particles.shifts.float().cpu().clone()
    return RefineState(iteration=0, volumes=[vol.cpu(), vol.clone().cpu()], full=vol.cpu(), sigma2=sigma2,
                       rotations=rot, shifts=shifts, half=half,
                       order=cfg.healpix_order, refinements=0, no_gain=0, best_shell=shell,
                       k_max=int(min(size // 2, math.floor(shell) + cfg.incr_size)), converged=False,
                       fsc=torch.zeros(size // 2 + 1, dtype=torch.float64), resolution=float("inf"), history=[],
                       config=asdict(cfg), elapsed_s=0.0, **relax)


def _resumed_state(run, cfg: RefineConfig) -> RefineState:
    """The checkpointed state of ``run`` (made with the same options, except ``max_iterations`` and
    ``batch_size``)."""
    from ..io.checkpoint import load_checkpoint

    if run is None:
        raise InputError("resume needs a run folder holding checkpoint.pt")
    state = RefineState.from_dict(load_checkpoint(run.path(CHECKPOINT)))
    now = asdict(cfg)
    made = asdict(RefineConfig.from_dict({**now, **state.config}))  # options added since: their defaults
    free = ("max_iterations", "batch_size")  # neither changes what an iteration computes (beyond rounding)
    diff = sorted(k for k in now if k not in free and made.get(k) != now[k])
    if diff:
        raise InputError(f"{run.path(CHECKPOINT)}: made with different options ({', '.join(diff)})")
    return state


def auto_refine(particles: Particles, initial_volume: torch.Tensor, *, config: RefineConfig | None = None,
                run=None, device=None, progress: bool = True, resume: bool = False,
                on_iteration: Callable[[RefineState], None] | None = None) -> RefineResult:
    """Gold-standard auto-refinement of ``particles`` (CTF from their metadata, poses unknown) from
    ``initial_volume`` ``(D, D, D)`` ``[z, y, x]`` (low-passed to ``config.initial_lowpass`` Å first).

    config: :class:`RefineConfig` (default: RELION's GUI defaults). run: a
    :class:`~cryolens.io.runfolder.RunFolder` for the checkpoint (needed for ``resume``). device:
    compute device (default CPU). resume: continue from ``run``'s checkpoint. on_iteration: called with
    the :class:`RefineState` after each iteration, on one rank (the recipe writes its per-iteration snapshots).
    Returns a :class:`RefineResult` (CPU tensors).
    """
    from ..io.checkpoint import save_checkpoint

    cfg = config or RefineConfig()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    progress = progress and is_main()
    state = _resumed_state(run, cfg) if resume else _initial_state(particles, initial_volume, cfg, dev)
    join = TimingJoin()  # the iterations' per-rank timing (rank_timing)
    while not state.converged and state.iteration < cfg.max_iterations:
        timer = RankTimer(dev)
        state = _iteration(particles, state, cfg, dev, progress, timer)
        state.elapsed_s = state.elapsed_s + timer.seconds()[-1].item()
        state.history[-1]["elapsed_s"] = state.elapsed_s
        join.finish(state.history, back=2)  # the previous iteration's
        with timer.part("write_s"):  # snapshots and checkpoint on two ranks at once (module docstring)
            if on_iteration is not None and snapshot_writer():
                on_iteration(state)
            if run is not None and is_main():
                save_checkpoint(run.path(CHECKPOINT), state.to_dict())
        join.start(timer)
        if progress:
            h = state.history[-1]
            tqdm.write(f"iteration {h['iteration']}: {h['resolution_A']:.2f} Å, step {h['angular_step_deg']:.2f}°, "
                       f"median pose change {h['median_pose_change_deg']:.2f}°")
    join.finish(state.history)  # (then every rank's writes are done)
    halves = tuple(v.float() for v in (state.unfiltered or state.volumes))
    return RefineResult(volume=state.full.float(), half_maps=halves, fsc=state.fsc.numpy(),
                        resolution=float(state.resolution), rotations=state.rotations.float(),
                        shifts=state.shifts.float(), half=state.half.numpy(), history=state.history,
                        pixel_size=particles.pixel_size, converged=bool(state.converged),
                        sigma2=(state.sigma2[0], state.sigma2[1]), relax_axis=state.relax_axis)

"""What the amortized-pose recipes (``cryoai``, ``cryoposenet``) share: a pose encoder and a volume
trained together on the one engine, then poses for every image, an optional modal refinement, and the
run folder.

Model (:class:`AmortizedPoseModel`): :class:`~cryolens.inference.pose_encoder.PoseEncoder` gives
``(R, t)`` per image; a subclass says how the volume predicts an image and compares it
(``image_errors``: the recipe's decoder and loss). With ``pose_heads = M > 1`` the encoder gives ``M``
rotation hypotheses per image and the per-image error is the smallest of their ``M`` errors (winner-take-all;
the gradient reaches the winning head only). With ``symmetrized_loss`` the per-image error is
:func:`~cryolens.inference.losses.symmetrized_loss` (the encoder sees ``Y`` and ``R_π Y``). The engine's
contract: ``forward(batch) → {"loss", "error", "pi_fraction"}``; the metadata's poses never reach it (the
recipe strips them).

After training (:func:`finish`), each image's pose is the encoder's, taken from the better of the two
branches when the loss is symmetrized (a win of the π-branch gives ``inplane_pi_pose(E(R_π Y))``).
``refine_poses``: each pose is then replaced by
:func:`~cryolens.inference.pose_search.hierarchical_search` against the trained volume rendered to a
voxel map (``refine_base_level``, ``refine_levels``, ``refine_keep``; shifts within ``±max_shift`` in steps
of ``refine_shift_step``), and the images are back-projected with the refined poses
(:func:`~cryolens.methods.backprojection.backproject`: half maps, their FSC and a filtered full map, in the
subfolder ``refined/``) — the full-resolution map the amortized map, band-limited or not, leads to. After
one round that half-map FSC is optimistic: every pose was found against the one trained map, not against
independent halves. ``refine_rounds = R > 1`` adds ``R − 1`` gold-standard rounds
(:func:`refine_poses_halves`): the images are back-projected with the last poses into two half maps, and
each half-set's images are searched again, one level finer, against its own half map weighted per shell by
``sqrt(2 FSC / (1 + FSC))`` and solvent-flattened (cryoSPARC's homogeneous refinement in outline). The pose
error of every round is reported (``refined_round1`` …, the last as ``refined``). When the input metadata
carries rotations (a simulated dataset's ground truth), the rotation error after global alignment and the
mirror check
(:func:`~cryolens.metrics.pose_error.pose_error_summary`) is reported for the amortized poses and, when
refined, for the refined ones, with a histogram ``pose_error.png``.

Run folder: ``checkpoint.pt`` (resumable), ``log.jsonl``, ``map.mrc``, ``poses.star`` (RELION 3.1, the
particles with the estimated rotations and shifts; refined ones when ``refine_poses``), ``poses.npz``
(``rotations (N, 3, 3)``, ``shifts (N, 2)`` px, and ``amortized_rotations`` / ``amortized_shifts`` when
refined), ``training_curves.png``, ``pose_error.png`` (when the metadata has rotations), ``metrics.json``,
``report.html``; with ``refine_poses`` also ``refined/`` (``map.mrc``, ``half1.mrc``, ``half2.mrc``, ``fsc.png``,
``metrics.json``; its half-map resolution is ``resolution_halfmap_0143_refined_A`` in the run's metrics).
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..imaging.fft import fft2_centered
from ..imaging.rotations import inplane_pi_pose
from ..imaging.slice import prepare_volume_ft
from ..inference.distributed import is_main
from ..inference.engine import Trainer, read_log
from ..inference.losses import symmetrized_loss
from ..inference.pose_encoder import PoseEncoder
from ..inference.pose_search import hierarchical_search
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .cryodrgn import sample_images, train_config, training_summary

# options every amortized-pose recipe has (the recipes add their decoder's and published values)
COMMON_DEFAULTS = {
    "enc_channels": 16, "enc_max_channels": 128, "enc_convs": 2, "enc_hidden": [512, 256], "enc_lowpass": 0.0,
    "max_shift": 0.0, "symmetrized_loss": True, "pose_heads": 1,
    "refine_poses": False, "refine_base_level": 2, "refine_levels": 2, "refine_keep": 8, "refine_shift_step": 1.0,
    "refine_rounds": 1,
    "weight_decay": 0.0, "optimizer": "adam", "amp": True, "cpu_amp": False, "seed": 0, "num_workers": 0,
    "epoch_images": 0, "resume": False, "norm_images": 1000, "pose_batch": 256,
}


class AmortizedPoseModel(nn.Module, abc.ABC):
    """Pose encoder + a volume. Abstract: a recipe's subclass supplies the volume through
    ``set_norm``, ``image_errors`` and ``render_map`` (``CryoAI``, ``CryoPoseNet``)."""

    def __init__(self, box_size: int, pixel_size: float, config: dict):
        super().__init__()
        self.pixel_size = float(pixel_size)
        self.symmetrized = bool(config["symmetrized_loss"])
        self.encoder = PoseEncoder(box_size, int(config["enc_channels"]), int(config["enc_max_channels"]),
                                   int(config["enc_convs"]), tuple(int(h) for h in config["enc_hidden"]),
                                   float(config["max_shift"]), float(config["enc_lowpass"]),
                                   int(config["pose_heads"]))

    @abc.abstractmethod
    def set_norm(self, value: float) -> None:
        """The data scale: ``value`` is the std of the real-space images."""

    @abc.abstractmethod
    def image_errors(self, images, rotations, shifts, ctf) -> torch.Tensor:
        """``(B,)`` per-image loss of ``images (B, D, D)`` under ``rotations (B, 3, 3)``, ``shifts (B, 2)`` px
        and ``ctf`` (a :class:`~cryolens.imaging.ctf.CTFParams` batch or ``None``)."""

    @abc.abstractmethod
    def render_map(self) -> torch.Tensor:
        """The trained map ``(D, D, D)`` float32 real space ``[z, y, x]``, in the images' units."""

    def branches(self, images: torch.Tensor, ctf) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(error (B,), pi (B,) bool, rotations (B, 3, 3), shifts (B, 2))``: the per-image loss and the
        pose of each image (module docstring), symmetrized or not."""
        b = images.shape[0]
        out = {}

        def err(x: torch.Tensor) -> torch.Tensor:
            rots, sh = self.encoder.hypotheses(x)  # (B', M, 3, 3), (B', 2)
            n, m = rots.shape[:2]
            idx = torch.arange(n, device=x.device)
            c = None if ctf is None else ctf[idx % b]
            best = torch.zeros(n, dtype=torch.long, device=x.device)
            if m > 1:  # the winner, without a graph (the gradient of a min reaches only the winning head)
                rows = idx.repeat_interleave(m)
                with torch.no_grad():
                    e_all = self.image_errors(x[rows], rots.detach().reshape(n * m, 3, 3), sh.detach()[rows],
                                              None if c is None else c[rows])
                best = e_all.reshape(n, m).argmin(dim=1)
            out["rot"], out["shift"] = rots[idx, best], sh
            return self.image_errors(x, out["rot"], sh, c)

        if not self.symmetrized:
            e = err(images)
            return e, torch.zeros(b, dtype=torch.bool, device=e.device), out["rot"], out["shift"]
        e, pi = symmetrized_loss(images, err)
        rot_pi, sh_pi = inplane_pi_pose(out["rot"][b:], out["shift"][b:])
        rot = torch.where(pi[:, None, None], rot_pi, out["rot"][:b])
        sh = torch.where(pi[:, None], sh_pi, out["shift"][:b])
        return e, pi, rot, sh

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        e, pi, _, _ = self.branches(batch["image"], batch.get("ctf"))
        loss = e.mean()
        return {"loss": loss, "error": loss.detach(), "pi_fraction": pi.float().mean()}


@torch.no_grad()
def infer_poses(model: AmortizedPoseModel, particles: Particles, device, batch_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rotations (N, 3, 3), shifts (N, 2) px)`` CPU float32 of every particle, in STAR order (eval mode)."""
    from ..memory import release_free_heap

    was = model.training
    model.eval()
    n = len(particles)
    rots, shifts = torch.empty(n, 3, 3), torch.empty(n, 2)  # allocated once, before the big temporaries
    for idx, images in iterate_batches(particles, batch_size):
        it = torch.as_tensor(idx)
        ctf = None if particles.ctf is None else particles.ctf[it].to(device)
        _, _, r, s = model.branches(images.to(device), ctf)
        rots[it] = r.float().cpu()
        shifts[it] = s.float().cpu()
        del r, s
        release_free_heap()  # the batch's freed activations: back to the system (cryolens.memory)
    model.train(was)
    return rots, shifts


@torch.no_grad()
def refine_poses(volume: torch.Tensor, particles: Particles, config: dict, device, indices=None,
                 n_levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Modal poses ``(rotations (M, 3, 3), shifts (M, 2) px)`` of the particles ``indices`` (default all,
    ``M = N``) by hierarchical search against ``volume (D, D, D)`` (module docstring; CTF from the
    metadata when present; ``n_levels`` overrides ``refine_levels``)."""
    vft = prepare_volume_ft(volume.to(device), pad=2)
    levels = int(config["refine_levels"]) if n_levels is None else int(n_levels)
    rots, shifts = [], []
    for idx, images in iterate_batches(particles, int(config["pose_batch"]), indices):
        ctf = None if particles.ctf is None else particles.ctf[torch.as_tensor(idx)].to(device)
        res = hierarchical_search(fft2_centered(images.to(device)), vft, ctf=ctf, pixel_size=particles.pixel_size,
                                  base_level=int(config["refine_base_level"]), n_levels=levels,
                                  max_shift=float(config["max_shift"]),
                                  shift_step=float(config["refine_shift_step"]), keep=int(config["refine_keep"]))
        rots.append(res.rotations.float().cpu())
        shifts.append(res.shifts.float().cpu())
    return torch.cat(rots), torch.cat(shifts)


def refine_poses_halves(halves: tuple[torch.Tensor, torch.Tensor], fsc_curve: np.ndarray, particles: Particles,
                        config: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One gold-standard round (module docstring): the images of half-set ``h``
    (:func:`~cryolens.io.particles.half_set_labels` with ``config["seed"]``, the split of the back-projection)
    searched against ``halves[h] (D, D, D)`` weighted per shell by
    :func:`~cryolens.inference.reconstruct.fsc_reference_weight` of ``fsc_curve`` (the halves' FSC) and
    solvent-flattened outside a sphere of 0.4 D px, with ``refine_levels + 1`` levels. Returns
    ``(rotations (N, 3, 3), shifts (N, 2) px)``."""
    from ..imaging.grids import flatten_solvent, shell_filter_volume
    from ..inference.reconstruct import fsc_reference_weight
    from ..io.particles import half_set_labels

    labels = half_set_labels(particles, int(config["seed"]))
    weight = fsc_reference_weight(fsc_curve)
    n, d = len(particles), particles.box_size
    rots, shifts = torch.zeros(n, 3, 3), torch.zeros(n, 2)
    for h, half in enumerate(halves):
        idx = np.nonzero(labels == h)[0]
        if idx.size == 0:
            continue
        reference = flatten_solvent(shell_filter_volume(half.float(), weight), 0.4 * d)
        r, t = refine_poses(reference, particles, config, device, idx, int(config["refine_levels"]) + 1)
        rots[torch.as_tensor(idx)], shifts[torch.as_tensor(idx)] = r, t
    return rots, shifts


def _pose_metrics(run, rotations: dict[str, torch.Tensor], truth: torch.Tensor | None) -> dict:
    """Rotation errors of each pose set against ``truth`` (when given), a histogram, JSON-ready summaries."""
    from ..analysis.bench_plots import plot_pose_errors
    from ..metrics.pose_error import pose_error_summary, rotation_errors

    if truth is None:
        return {}
    metrics, errors = {}, {}
    for name, r in rotations.items():
        metrics[f"pose_error_{name}"] = {k: v for k, v in pose_error_summary(r, truth).items() if k != "alignment"}
        metrics[f"median_rotation_error_{name}_deg"] = metrics[f"pose_error_{name}"]["median_deg"]
        errors[name] = rotation_errors(r, truth)
    plot_pose_errors(errors, run.path("pose_error.png"), "rotation error vs the input metadata's poses")
    return metrics


def finish(model: AmortizedPoseModel, particles: Particles, blind: Particles, run, config: dict, device,
           title: str):
    """After training (rank 0): poses, optional refinement, map, STAR, metrics, plots, report; returns the
    :class:`~cryolens.methods.registry.MethodOutputs`."""
    from ..analysis.curves import plot_training_curves
    from ..analysis.report import write_report
    from ..io.mrc import write_volume
    from ..io.star import write_star
    from .registry import MethodOutputs

    rot, sh = infer_poses(model, blind, device, int(config["pose_batch"]))
    volume = model.render_map().cpu()
    write_volume(run.path("map.mrc"), volume.numpy(), particles.pixel_size)
    poses = {"amortized": rot}
    npz = {"rotations": rot.numpy(), "shifts": sh.numpy()}
    extra = {}
    if config["refine_poses"]:
        from ..io.runfolder import RunFolder
        from .backprojection import backproject, write_outputs

        seed, rounds = int(config["seed"]), max(1, int(config["refine_rounds"]))
        rot_r, sh_r = refine_poses(volume, blind, config, device)
        for k in range(2, rounds + 1):  # gold-standard rounds against the halves of the last round's poses
            poses[f"refined_round{k - 1}"] = rot_r
            bp = backproject(dataclasses.replace(blind, rotations=rot_r, shifts=sh_r), device=device, seed=seed,
                             progress=False)
            extra[f"resolution_halfmap_0143_refined_round{k - 1}_A"] = bp.resolution
            rot_r, sh_r = refine_poses_halves((bp.half1, bp.half2), bp.fsc, blind, config, device)
        poses["refined"] = rot_r
        npz = {"rotations": rot_r.numpy(), "shifts": sh_r.numpy(), "amortized_rotations": rot.numpy(),
               "amortized_shifts": sh.numpy()}
        rot, sh = rot_r, sh_r
        posed = dataclasses.replace(blind, rotations=rot, shifts=sh)
        bp = write_outputs(backproject(posed, device=device, seed=seed, progress=False), posed,
                           RunFolder(run.path("refined")))
        extra["resolution_halfmap_0143_refined_A"] = bp["resolution_halfmap_0143_A"]
    np.savez(run.path("poses.npz"), **npz)
    write_star(run.path("poses.star"), dataclasses.replace(particles, rotations=rot, shifts=sh))
    records = read_log(run.path("log.jsonl"))
    if records:
        plot_training_curves(records, run.path("training_curves.png"), title)
    metrics = {"epochs": int(config["epochs"]), **training_summary(records),
               **_pose_metrics(run, poses, particles.rotations), **extra}
    run.write_metrics({**run.read_json("metrics.json"), **metrics})
    write_report(run.root, title)
    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, rotations=rot, shifts=sh, metrics=metrics)


def fit_amortized(model: AmortizedPoseModel, particles: Particles, run, config: dict, device, progress: bool,
                  recipe: str, title: str):
    """Train ``model`` on the one engine (resumable) and write the run folder (module docstring)."""
    from .registry import MethodOutputs

    if particles.ctf is None:
        raise InputError(f"{particles.name}: {recipe} needs CTF parameters")
    device = torch.device(device or "cpu")
    # the model never sees the metadata's poses: they are stripped here (kept only to score the result)
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model.set_norm(float(sample_images(blind, int(config["norm_images"]), int(config["seed"])).std()))
    trainer = Trainer(model, blind, train_config(config), run.root, device, progress)
    trainer.fit(resume=bool(config.get("resume")))
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    return finish(model, particles, blind, run, config, device, title)

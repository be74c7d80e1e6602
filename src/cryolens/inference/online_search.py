"""cryoDRGN2's pose search during training, as an :class:`~cryolens.inference.strategy.InferenceStrategy`
on the one engine: each image's pose ``(R, t)`` is a point estimate found by the hierarchical search
(:func:`~cryolens.inference.pose_search.hierarchical_search`) against the volume being trained.

Schedule (:class:`PoseSearchSchedule`, cryoDRGN2's ``abinit_homo``): the poses start uniformly random
(seeded) and shifts zero; the first ``pretrain_epochs`` train on them; from then on every
``search_every``-th epoch is a search epoch (``--ps-freq``), and the epochs between reuse the poses found.
``search_mode="online"``: in a search epoch each image is searched just before its first gradient step of
the epoch, against the volume as trained so far, ``search_batch`` images at a time (the batch's images
and the next ones in the epoch's order, the map rendered again for each group) — a stochastic hard EM.
Under DDP each rank searches the images it visits and the epoch's end merges them (one owner per image,
its pose taken as is). ``search_mode="epoch"``: all images at the start of the epoch against one frozen
map (rank 0 searches, the others receive the result).

Frequency marching (``--l-start 12 --l-end 32 --l-ramp-epochs 25`` at D = 128, in proportion): the top
shell rises linearly from ``kmax_start`` (default ``round(3D/32)``) to ``kmax_end`` (default ``D/4``)
over ``kmax_epochs`` epochs, and within one search from ``kmax_start`` up to it across levels
(:func:`~cryolens.inference.pose_search.frequency_schedule`).

The search scores slices of the volume model *rendered once to a voxel grid* (2× oversampled,
trilinear) at the mean of the current latents (``mean_z``; ``None`` when homogeneous).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..imaging.fft import fft2_centered
from ..imaging.rotations import geodesic_distance, random_rotations
from ..imaging.slice import prepare_volume_ft
from ..io.dataset import read_images
from ..io.particles import Particles
from ..volumes.protocol import VolumeModel
from .distributed import broadcast_tensors, is_main
from .pose_search import frequency_schedule, hierarchical_search


@dataclass(frozen=True)
class PoseSearchSchedule:
    """When and how the poses are searched (module docstring). Shells and levels as in
    :func:`~cryolens.inference.pose_search.hierarchical_search`; ``max_shift``, ``shift_step`` px;
    ``kmax_start``/``kmax_end`` 0 = cryoDRGN2's proportions of the box."""

    pretrain_epochs: int = 1
    search_every: int = 5
    base_level: int = 2
    n_levels: int = 4
    keep: int = 8
    kmax_start: int = 0
    kmax_end: int = 0
    kmax_epochs: int = 25
    max_shift: float = 10.0
    shift_step: float = 1.5
    search_batch: int = 64
    search_mode: str = "online"

    def kmax_range(self, box_size: int) -> tuple[int, int]:
        """``(k_start, k_end)`` shells of the marching (``round(3D/32)`` and ``D/4`` by default)."""
        k1 = int(self.kmax_end) or box_size // 4
        k0 = int(self.kmax_start) or max(2, int(round(3 * box_size / 32)))
        return min(k0, k1), k1

    def kmax(self, epoch: int, box_size: int) -> int:
        """The search's top shell at ``epoch`` (0-based): linear from ``k_start`` to ``k_end``."""
        k0, k1 = self.kmax_range(box_size)
        frac = min(1.0, epoch / max(int(self.kmax_epochs), 1))
        return int(round(k0 + (k1 - k0) * frac))

    def is_search_epoch(self, epoch: int) -> bool:
        p, every = int(self.pretrain_epochs), max(int(self.search_every), 1)
        return epoch >= p and (epoch - p) % every == 0


@dataclass
class _OnlineEpoch:
    """The state of an online search epoch: the epoch's visiting ``order`` and how far it was read
    (``next``), the top shell ``k``, the poses found so far and which images were ``searched``."""

    epoch: int
    order: np.ndarray
    k: int
    rotations: torch.Tensor
    shifts: torch.Tensor
    searched: torch.Tensor
    old: torch.Tensor
    z: torch.Tensor | None
    device: torch.device
    next: int = 0


class PoseSearch:
    """Per-image poses by search during training (module docstring). ``rotations (N, 3, 3)`` image →
    volume frame and ``shifts (N, 2)`` px are the current values; ``searches`` records each search
    (``epoch``, ``k_max``, ``median_pose_change_deg``, ``mode``).

    particles: the images (their metadata poses are never read). volume: the model searched against
    (``render(z)``). mean_z: ``device → (1, L)`` mean of the current latents or ``None``. seed: of the
    random start. device: where the poses live.
    """

    def __init__(self, schedule: PoseSearchSchedule, particles: Particles, volume: VolumeModel,
                 mean_z: Callable[[torch.device], torch.Tensor | None], seed: int = 0, device=None,
                 progress: bool = True):
        if schedule.search_mode not in ("online", "epoch"):
            raise ValueError(f"search_mode {schedule.search_mode!r}: expected online or epoch")
        self.schedule, self.particles, self.volume, self.mean_z = schedule, particles, volume, mean_z
        self.progress = progress
        g = torch.Generator().manual_seed(int(seed) + 7919)
        n = len(particles)
        self.rotations = random_rotations(n, generator=g).to(device)
        self.shifts = torch.zeros(n, 2, device=device)
        self.searches: list[dict] = []
        self._online: _OnlineEpoch | None = None

    # --- the engine's callbacks ---
    def state_dict(self) -> dict:
        return {"rotations": self.rotations, "shifts": self.shifts}

    def load_state_dict(self, state: dict) -> None:
        self.rotations = state["rotations"].to(self.rotations)
        self.shifts = state["shifts"].to(self.shifts)

    def assign(self, batch: dict) -> dict:
        """``batch`` with the current ``rotation`` and ``shift`` of its images."""
        idx = batch["index"]
        return {**batch, "rotation": self.rotations[idx], "shift": self.shifts[idx]}

    def before_batch(self, batch: dict, trainer) -> dict:
        st = self._online
        if st is None or not trainer.model.training:
            return self.assign(batch)
        idx = batch["index"]
        self._search_online(idx)
        return {**batch, "rotation": st.rotations[idx], "shift": st.shifts[idx]}

    def on_epoch_end(self, epoch: int, trainer) -> None:
        self.finish_online()

    def on_epoch_start(self, epoch: int, trainer) -> None:
        self.finish_online()
        if not self.schedule.is_search_epoch(epoch):
            return
        if self.schedule.search_mode == "epoch":
            self.search(epoch, trainer.device)
            return
        # online: each image is searched just before its first gradient step of this epoch, against the
        # volume as trained so far; the order this rank visits is the sampler's
        trainer.sampler.set_epoch(epoch)
        order = list(itertools.islice(iter(trainer.sampler), trainer.epoch_indices()))
        device = torch.device(trainer.device)
        self._online = _OnlineEpoch(epoch, np.asarray(order, dtype=np.int64), self._kmax(epoch),
                                    self.rotations.detach().clone(), self.shifts.detach().clone(),
                                    torch.zeros(len(self.particles), dtype=torch.bool),
                                    self.rotations.detach().clone(), self.mean_z(device), device)

    # --- the searches ---
    def _kmax(self, epoch: int) -> int:
        return self.schedule.kmax(epoch, self.particles.box_size)

    @torch.no_grad()
    def _search_online(self, idx: torch.Tensor) -> None:
        """Search the images of this batch not yet searched this epoch, together with the next ones in
        the epoch's order up to ``search_batch`` images, against the current volume."""
        st = self._online
        todo = [int(j) for j in idx.cpu().tolist() if not bool(st.searched[j])]
        if not todo:
            return
        chunk, seen, pos = list(todo), set(todo), st.next
        while len(chunk) < int(self.schedule.search_batch) and pos < st.order.size:
            j = int(st.order[pos])
            pos += 1
            if j not in seen and not bool(st.searched[j]):
                chunk.append(j)
                seen.add(j)
        st.next = pos
        chunk = np.sort(np.asarray(chunk, dtype=np.int64))
        rot, sh = self._search_images(chunk, self._volume_ft(st.device, st.z), st.k, st.device)
        it = torch.as_tensor(chunk)
        st.rotations[it.to(st.rotations.device)] = rot.to(st.rotations)
        st.shifts[it.to(st.shifts.device)] = sh.to(st.shifts)
        st.searched[it] = True

    def finish_online(self) -> None:
        """Write an online search epoch's poses into the current poses (merged over DDP ranks, each of
        which searched its own images) and record the search."""
        st, self._online = self._online, None
        if st is None:
            return
        rot, sh, done = st.rotations, st.shifts, st.searched.to(st.rotations.device)
        if dist.is_available() and dist.is_initialized():
            # one owner per image (the sampler pads with repeats, so an image can be on two ranks):
            # the highest rank that searched it; its pose is taken as is, never averaged
            owner = torch.where(done, float(dist.get_rank() + 1), 0.0).to(rot.dtype)
            dist.all_reduce(owner, op=dist.ReduceOp.MAX)
            mine = (done & (owner == dist.get_rank() + 1)).to(rot.dtype)
            rot, sh = rot * mine[:, None, None], sh * mine[:, None]
            dist.all_reduce(rot)
            dist.all_reduce(sh)
            done = owner > 0
        self.rotations[done] = rot[done].to(self.rotations)
        self.shifts[done] = sh[done].to(self.shifts)
        self._record(st.epoch, st.k, st.old)

    def _record(self, epoch: int, k: int, old: torch.Tensor) -> None:
        moved = torch.rad2deg(geodesic_distance(old, self.rotations)).median()
        self.searches.append({"epoch": epoch, "k_max": k, "median_pose_change_deg": float(moved),
                              "mode": self.schedule.search_mode})

    def _volume_ft(self, device: torch.device, z: torch.Tensor | None) -> torch.Tensor:
        """The current volume at ``z`` rendered to a 2× oversampled voxel transform."""
        return prepare_volume_ft(self.volume.render(z)[0].to(device), pad=2)

    def _search_images(self, indices: np.ndarray, vft: torch.Tensor, k: int, device: torch.device):
        """Hierarchical search of the images ``indices`` against ``vft`` with top shell ``k``:
        ``(rotations (B, 3, 3), shifts (B, 2) px)``."""
        sch, parts = self.schedule, self.particles
        ks = frequency_schedule(parts.box_size, sch.n_levels, min(sch.kmax_range(parts.box_size)[0], k), k)
        images = read_images(parts, indices)
        ctf = None if parts.ctf is None else parts.ctf[torch.as_tensor(indices)].to(device)
        res = hierarchical_search(fft2_centered(images.to(device)), vft, ctf=ctf, pixel_size=parts.pixel_size,
                                  base_level=int(sch.base_level), n_levels=int(sch.n_levels),
                                  max_shift=float(sch.max_shift), shift_step=float(sch.shift_step),
                                  keep=int(sch.keep), k_max=ks)
        return res.rotations, res.shifts

    @torch.no_grad()
    def search(self, epoch: int, device) -> None:
        """Replace every image's pose by the search against the current map (rank 0; the result is
        broadcast to the other DDP ranks)."""
        self.finish_online()
        if is_main():
            self._search_all(epoch, torch.device(device))
        broadcast_tensors([self.rotations, self.shifts])

    def _search_all(self, epoch: int, device: torch.device) -> None:
        parts = self.particles
        vft = self._volume_ft(device, self.mean_z(device))
        k = self._kmax(epoch)
        bar = tqdm(total=len(parts), desc=f"pose search (k ≤ {k})", unit="img", disable=not self.progress,
                   leave=False)
        old = self.rotations.clone()
        n, step = len(parts), int(self.schedule.search_batch)
        for s in range(0, n, step):
            idx = np.arange(s, min(s + step, n))
            rot, sh = self._search_images(idx, vft, k, device)
            it = torch.as_tensor(idx)
            self.rotations[it.to(self.rotations.device)] = rot.to(self.rotations)
            self.shifts[it.to(self.shifts.device)] = sh.to(self.shifts)
            bar.update(len(idx))
        bar.close()
        self._record(epoch, k, old)


def upgrade_checkpoint(path) -> bool:
    """Move the poses of a cryodrgn2 checkpoint written before the search became a strategy (model buffers
    ``pose_rotations``, ``pose_shifts``) to the strategy's state, so that the run resumes; returns whether
    the file was changed."""
    from pathlib import Path

    from ..io.checkpoint import load_checkpoint, save_checkpoint

    if not Path(path).is_file():
        return False
    ck = load_checkpoint(path, map_location="cpu")
    if "pose_rotations" not in ck["model"] or "strategies" in ck:
        return False
    ck["strategies"] = [{"rotations": ck["model"].pop("pose_rotations"), "shifts": ck["model"].pop("pose_shifts")}]
    save_checkpoint(path, ck)
    return True

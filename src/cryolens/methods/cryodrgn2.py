"""cryoDRGN2 (Zhong et al. 2021, ICCV; cryoDRGN's ``abinit_homo`` / ``abinit_het``): ab initio
reconstruction with a neural volume and frequency-marching hierarchical pose search.

Composition: the cryoDRGN model (:class:`~cryolens.methods.cryodrgn.CryoDRGN`, homogeneous or with the
encoder for ``z``) whose poses are per-image buffers instead of known metadata, trained by the one
engine, with poses from :func:`~cryolens.inference.pose_search.hierarchical_search` (SO(3) grid level
``base_level`` = 4,608 rotations × a shift grid, ``n_levels`` refinements keeping ``keep`` poses, the
last keeping 1). The first ``pretrain_epochs`` train the volume on uniformly random poses (cryoDRGN2's
pre-training). From then on every ``search_every``-th epoch is a search epoch (cryoDRGN's ``--ps-freq``);
the epochs between reuse the poses found.

``search_mode="online"`` (default, as cryoDRGN's ``abinit_homo``): in a search epoch each image's pose is
searched just before its first gradient step of the epoch, against the volume *as trained so far*, so
the volume moves between one mini-batch's search and the next (a stochastic hard EM). Images are
searched ``search_batch`` at a time (the batch's images and the next ones in the epoch's order), the
map re-rendered for each such group. ``search_mode="epoch"`` searches all images at the start of the
epoch against one frozen map (batch alternation; it locks into a self-consistent wrong solution more
easily, see ``benchmarks/RESULTS.md``).

Frequency marching (cryoDRGN's ``--l-start 12 --l-end 32 --l-ramp-epochs 25`` at D = 128, in the same
proportions): the search's top shell rises linearly from ``kmax_start`` (default ``round(3D/32)``) to
``kmax_end`` (default ``D/4``) over ``kmax_epochs`` epochs, and within one search from ``kmax_start``
up to it across levels (:func:`~cryolens.inference.pose_search.frequency_schedule`). A last search
(``final_search``) against the final map follows the last epoch, so the poses written match it.

One deliberate difference: the search scores slices of the neural volume *rendered once to a voxel
grid* (2× oversampled, trilinear) rather than evaluating the MLP at every candidate pose — the same
function up to interpolation, and on a CPU thousands of times cheaper. The heterogeneous variant
(``heterogeneous=true``) searches against the map at the mean ``z`` of the current latents (cryoDRGN2
evaluates each image's own ``z``).

Outputs as :mod:`~cryolens.methods.cryodrgn`, plus ``poses.star`` (the particles with the estimated
rotations and shifts) and ``poses.npz`` (``rotations (N, 3, 3)``, ``shifts (N, 2)`` px).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.fft import fft2_centered
from ..imaging.rotations import random_rotations
from ..imaging.slice import prepare_volume_ft
from ..inference.distributed import broadcast_module, is_main
from ..inference.engine import Trainer
from ..inference.pose_search import frequency_schedule, hierarchical_search
from ..io.dataset import read_images
from ..io.particles import Particles
from . import cryodrgn

DEFAULTS = {
    **{k: v for k, v in cryodrgn.DEFAULTS.items() if k not in ("batch_size", "dec_dim", "epochs")},
    "dec_dim": 256, "batch_size": 16, "epochs": 30, "heterogeneous": False,
    "pretrain_epochs": 1, "search_every": 5, "base_level": 2, "n_levels": 4, "keep": 8,
    "kmax_start": 0, "kmax_end": 0, "kmax_epochs": 25, "max_shift": 10.0, "shift_step": 1.5,
    "search_batch": 64, "final_search": True, "search_mode": "online",
}


def attach_pose_buffers(model: torch.nn.Module, n_images: int, seed: int = 0) -> None:
    """Give ``model`` per-image pose buffers ``pose_rotations (N, 3, 3)`` (uniformly random, seeded) and
    ``pose_shifts (N, 2)`` px (zero); saved and restored with its state dict."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    model.register_buffer("pose_rotations", random_rotations(n_images, generator=g))
    model.register_buffer("pose_shifts", torch.zeros(n_images, 2))


class CryoDRGN2(cryodrgn.CryoDRGN):
    """cryoDRGN with poses as buffers replaced by a pose search during training (module docstring)."""

    def __init__(self, box_size: int, pixel_size: float, n_images: int, config: dict, mode: str,
                 particles: Particles, progress: bool = True):
        super().__init__(box_size, pixel_size, n_images, config, mode)
        attach_pose_buffers(self, n_images, int(config["seed"]))
        self.cfg2 = dict(config)
        if self.cfg2["search_mode"] not in ("online", "epoch"):
            raise InputError(f"search_mode {self.cfg2['search_mode']!r}: expected online or epoch")
        self.particles = particles
        self.progress = progress
        self.searches: list[dict] = []
        self._online: dict | None = None  # the state of an online search epoch (see on_epoch_start)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        idx = batch["index"]
        if self._online is not None and self.training:
            self._search_online(idx)
            rot, sh = self._online["rotations"][idx], self._online["shifts"][idx]
        else:
            rot, sh = self.pose_rotations[idx], self.pose_shifts[idx]
        return super().forward({**batch, "rotation": rot, "shift": sh})

    def posterior(self, batch: dict, hartley: torch.Tensor | None = None):
        if hartley is None:  # the encoder centres each image with its current shift
            batch = {**batch, "shift": self.pose_shifts[batch["index"]]}
        return super().posterior(batch, hartley)

    def kmax_range(self) -> tuple[int, int]:
        """``(k_start, k_end)`` shells of the frequency marching (defaults: cryoDRGN2's 12 / 32 of a
        128-px box, i.e. ``round(3D/32)`` and ``D/4``)."""
        d = self.field.box_size
        k1 = int(self.cfg2["kmax_end"]) or d // 4
        k0 = int(self.cfg2["kmax_start"]) or max(2, int(round(3 * d / 32)))
        return min(k0, k1), k1

    def kmax(self, epoch: int) -> int:
        """The search's top shell at ``epoch`` (0-based): linear from ``k_start`` to ``k_end`` over
        ``kmax_epochs`` epochs."""
        k0, k1 = self.kmax_range()
        frac = min(1.0, epoch / max(int(self.cfg2["kmax_epochs"]), 1))
        return int(round(k0 + (k1 - k0) * frac))

    def is_search_epoch(self, epoch: int) -> bool:
        p, every = int(self.cfg2["pretrain_epochs"]), max(int(self.cfg2["search_every"]), 1)
        return epoch >= p and (epoch - p) % every == 0

    def on_epoch_end(self, epoch: int, trainer: Trainer) -> None:
        self.finish_online()

    def on_epoch_start(self, epoch: int, trainer: Trainer) -> None:
        self.finish_online()
        if not self.is_search_epoch(epoch):
            return
        if self.cfg2["search_mode"] == "epoch":
            self.search(epoch, trainer.device)
            return
        # online (cryoDRGN2): each image is searched just before its first gradient step of this epoch,
        # against the volume as trained so far; the order this rank visits is the sampler's
        trainer.sampler.set_epoch(epoch)
        order = list(itertools.islice(iter(trainer.sampler), trainer.epoch_indices()))
        self._online = {"epoch": epoch, "order": np.asarray(order, dtype=np.int64), "next": 0,
                        "device": torch.device(trainer.device), "k": self.kmax(epoch),
                        "rotations": self.pose_rotations.detach().clone(),
                        "shifts": self.pose_shifts.detach().clone(),
                        "searched": torch.zeros(len(self.particles), dtype=torch.bool),
                        "old": self.pose_rotations.detach().clone(), "z": self._mean_z(torch.device(trainer.device))}

    @torch.no_grad()
    def _search_online(self, idx: torch.Tensor) -> None:
        """Search the poses of the images of this batch not yet searched this epoch, together with the
        next ones in the epoch's order up to ``search_batch`` images, against the current volume."""
        st = self._online
        searched = st["searched"]
        todo = [int(j) for j in idx.cpu().tolist() if not bool(searched[j])]
        if not todo:
            return
        chunk, seen, order, pos = list(todo), set(todo), st["order"], st["next"]
        while len(chunk) < int(self.cfg2["search_batch"]) and pos < order.size:
            j = int(order[pos])
            pos += 1
            if j not in seen and not bool(searched[j]):
                chunk.append(j)
                seen.add(j)
        st["next"] = pos
        chunk = np.sort(np.asarray(chunk, dtype=np.int64))
        was = self.training
        self.eval()
        vft = self._volume_ft(st["device"], st["z"])
        rot, sh = self._search_images(chunk, vft, st["k"], st["device"])
        self.train(was)
        it = torch.as_tensor(chunk)
        st["rotations"][it.to(st["rotations"].device)] = rot.to(st["rotations"])
        st["shifts"][it.to(st["shifts"].device)] = sh.to(st["shifts"])
        st["searched"][it] = True

    def finish_online(self) -> None:
        """Write an online search epoch's poses into the pose buffers (merged over DDP ranks, each of
        which searched its own images) and record the search."""
        st, self._online = self._online, None
        if st is None:
            return
        rot, sh, done = st["rotations"], st["shifts"], st["searched"].to(st["rotations"].device)
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
        with torch.no_grad():
            self.pose_rotations[done] = rot[done].to(self.pose_rotations)
            self.pose_shifts[done] = sh[done].to(self.pose_shifts)
        self._record(st["epoch"], st["k"], st["old"])

    def _record(self, epoch: int, k: int, old: torch.Tensor) -> None:
        from ..imaging.rotations import geodesic_distance
        moved = torch.rad2deg(geodesic_distance(old, self.pose_rotations)).median()
        self.searches.append({"epoch": epoch, "k_max": k, "median_pose_change_deg": float(moved),
                              "mode": self.cfg2["search_mode"]})

    def _mean_z(self, device: torch.device) -> torch.Tensor | None:
        """``(1, zdim)`` mean of the current latents (``None`` when homogeneous)."""
        if not self.zdim:
            return None
        return torch.as_tensor(cryodrgn.infer_latents(self, self.particles, device).mean(0, keepdims=True),
                               device=device)

    def _volume_ft(self, device: torch.device, z: torch.Tensor | None) -> torch.Tensor:
        """The current volume at ``z`` rendered to a 2× oversampled voxel transform (for the search)."""
        return prepare_volume_ft(self.field.render(z)[0].to(device), pad=2)

    def _search_images(self, indices: np.ndarray, vft: torch.Tensor, k: int, device: torch.device):
        """Hierarchical search of the images ``indices`` against ``vft`` with top shell ``k``:
        ``(rotations (B, 3, 3), shifts (B, 2) px)``."""
        cfg, parts = self.cfg2, self.particles
        n_levels = int(cfg["n_levels"])
        ks = frequency_schedule(parts.box_size, n_levels, min(self.kmax_range()[0], k), k)
        images = read_images(parts, indices)
        it = torch.as_tensor(indices)
        ctf = None if parts.ctf is None else parts.ctf[it].to(device)
        res = hierarchical_search(fft2_centered(images.to(device)), vft, ctf=ctf, pixel_size=parts.pixel_size,
                                  base_level=int(cfg["base_level"]), n_levels=n_levels,
                                  max_shift=float(cfg["max_shift"]), shift_step=float(cfg["shift_step"]),
                                  keep=int(cfg["keep"]), k_max=ks)
        return res.rotations, res.shifts

    @torch.no_grad()
    def search(self, epoch: int, device) -> None:
        """Replace every image's pose by the hierarchical search against the current map (rank 0; the
        result is broadcast to the other DDP ranks)."""
        self.finish_online()
        if is_main():
            self._search(epoch, torch.device(device))
        broadcast_module(self)

    def _search(self, epoch: int, device: torch.device) -> None:
        parts = self.particles
        was = self.training
        self.eval()
        vft = self._volume_ft(device, self._mean_z(device))
        k = self.kmax(epoch)
        bar = tqdm(total=len(parts), desc=f"pose search (k ≤ {k})", unit="img", disable=not self.progress,
                   leave=False)
        old = self.pose_rotations.clone()
        n, step = len(parts), int(self.cfg2["search_batch"])
        for s in range(0, n, step):
            idx = np.arange(s, min(s + step, n))
            rot, sh = self._search_images(idx, vft, k, device)
            it = torch.as_tensor(idx)
            self.pose_rotations[it.to(self.pose_rotations.device)] = rot.to(self.pose_rotations)
            self.pose_shifts[it.to(self.pose_shifts.device)] = sh.to(self.pose_shifts)
            bar.update(len(idx))
        bar.close()
        self._record(epoch, k, old)
        self.train(was)


def fit(particles: Particles, known, run, config: dict, device=None, progress: bool = True):
    """Registry entry point of ``cryodrgn2``: ab initio, poses unknown (``heterogeneous`` adds ``z``)."""
    from ..io.star import write_star
    from .registry import MethodOutputs

    if particles.ctf is None:
        raise InputError(f"{particles.name}: cryodrgn2 needs CTF parameters")
    device = torch.device(device or "cpu")
    mode = "vae" if config.get("heterogeneous") else "homo"
    torch.manual_seed(int(config["seed"]))
    # the model never sees the metadata's poses: they are stripped here
    blind = dataclasses.replace(particles, rotations=None, shifts=None)
    model = CryoDRGN2(particles.box_size, particles.pixel_size, len(particles), config, mode, blind, progress)
    model.set_norm(cryodrgn.hartley_std(blind, int(config["norm_images"]), int(config["seed"])))
    if is_main():
        cryodrgn.write_model_json(run, model, particles, config, "cryodrgn2")
    trainer = Trainer(model, blind, cryodrgn.train_config(config), run.root, device, progress)
    trainer.fit(resume=bool(config.get("resume")))
    if config.get("final_search", True):
        model.search(int(config["epochs"]), device)
        trainer.save()
    if not is_main():
        return MethodOutputs(pixel_size=particles.pixel_size)
    out = cryodrgn.finish(model, blind, run, config, device, trainer)
    rot, sh = model.pose_rotations.cpu(), model.pose_shifts.cpu()
    np.savez(run.path("poses.npz"), rotations=rot.numpy(), shifts=sh.numpy())
    write_star(run.path("poses.star"), dataclasses.replace(particles, rotations=rot, shifts=sh))
    out.rotations, out.shifts = rot, sh
    out.metrics["pose_searches"] = model.searches
    return out

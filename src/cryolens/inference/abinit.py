"""Ab initio reconstruction, cryoSPARC-style: stochastic optimisation of the MAP objective over
mini-batches with the poses (and classes) marginalised inside each batch.

Punjani, Rubinstein, Fleet & Brubaker 2017, *cryoSPARC: algorithms for rapid unsupervised cryo-EM
structure determination*, Nat. Methods 14:290 (docs/METHODS.md): from random starts, SGD on
``−log p(V) − Σ_i log Σ_{k,R,t} π_k p(Y_i | V_k, R, t)`` with a mini-batch per step and the pose
integral approximated on the images of the batch only, the resolution limit growing over the
iterations; several classes at once for heterogeneous data. What we chose, and why:

- **Start** (:func:`random_start`, never the ground truth): seeded Gaussian noise, low-passed to the
  initial resolution, inside a soft sphere of radius ``0.35·D``, scaled to the signal power the
  images show (:func:`signal_power`); one independent start per class.
- **Pose marginalisation**: the exact posterior over a grid (:func:`~cryolens.inference.estep.
  class_pose_posterior`: SO(3) level ``grid_level``, 15° by default, × a square shift grid), pruned
  to its significant set (``mass`` 0.99) — a deterministic importance sampling of the integral.
- **Step** (online EM = preconditioned SGD): the sufficient statistics of the M-step
  (``data = Σ w C Y'``, ``weight = Σ w C²`` scattered along the slices, per class) are running
  averages ``S ← (1 − η_t) S + η_t (N / B) S_batch`` and the map is ``data / (weight + λ)``. One such
  update is exactly ``V ← V − η_t (weight + λ)⁻¹ ∇f_batch(V)`` with ``f_batch`` the batch's MAP
  objective scaled to ``N`` images, in the per-voxel (diagonal) approximation of the normal
  equations that RELION's and cryoSPARC's back-projection M-steps use: a stochastic gradient step
  with a diagonal Newton preconditioner (expand ``(1 − η)data_old = (1 − η)(weight_old + λ)V_old``).
  Step size ``η_t = max(1 / (t + 1), η_min)`` (``η_min`` 0.1): a plain running mean over the first
  ``1/η_min`` batches, then an exponential forgetting of the early, random-start batches over a horizon
  of ``1/η_min`` batches. (cryoSPARC's exact step rule — SGD with momentum and a Hessian-based step
  size in its Methods — is not reproduced; this is the same family.)
- **Batch size**: ``batch_size`` (90, cryoSPARC's initial mini-batch size) during the first half of the
  iterations, ``final_batch_size`` (300, its final one) after.
- **Resolution schedule**: the likelihood and the map use shells up to ``k(t)``, rising linearly
  from ``initial_resolution`` (35 Å) to ``final_resolution`` (12 Å, cryoSPARC's defaults) over the
  first ``0.75·n_iterations`` iterations, then held; the images and maps are Fourier-cropped to the
  box ``2·k_final`` (rounded up to even), as cryoSPARC works at reduced box size.
- **Prior**: per class ``λ(s) = σ²(s) / (pad³ · T · τ²(s))`` with ``τ²`` the power spectrum of the
  current map (:func:`~cryolens.inference.prior.map_prior`), ``λ = ∞`` beyond ``k(t)``.
- **Noise**: ``σ²(s)`` starts at the mean image power per shell (RELION's initial estimate) and
  follows the running average of the posterior-weighted residual power.
- **Class priors**: running average of the batches' mean class posteriors (same ``η_t``).

The result is handed to refinement (``auto_refine``) by the recipe (:mod:`cryolens.methods.abinit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered, fft3_centered, ifft3_centered
from ..imaging.grids import lowpass_filter_3d, shell_index_2d, shell_sum, spherical_mask
from ..imaging.slice import prepare_volume_ft
from ..imaging.so3_grid import so3_grid
from ..io.dataset import read_images
from ..io.particles import Particles
from ..imaging.spectra import fourier_crop_images, power_spectrum, resize_volume
from .distributed import all_reduce_sum, gather_rows, is_distributed, is_main, shard
from .estep import class_pose_posterior, translation_grid
from .likelihood import as_slicer
from .mstep import class_sums, insert_aggregates, noise_power
from .prior import map_prior
from .reconstruct import FourierAccumulator


def shell_of(resolution: float, size: int, pixel_size: float) -> int:
    """The Fourier shell ``round(D · px / resolution)`` (``resolution`` in Å), clipped to ``[1, D//2]``."""
    return int(min(size // 2, max(1, round(size * pixel_size / resolution))))


def signal_power(images_ft: torch.Tensor, ctf: torch.Tensor | None, sigma2: torch.Tensor) -> torch.Tensor:
    """Per-shell estimate ``(d//2+1,)`` of the slice power ``⟨|P|²⟩ = (⟨|Y|²⟩ − σ²) / ⟨C²⟩`` (≥ 0)."""
    size = images_ft.shape[-1]
    shells = shell_index_2d(size, device=images_ft.device)
    nsh = size // 2 + 1
    npix = shell_sum(torch.ones(size, size, device=images_ft.device, dtype=sigma2.dtype), shells, nsh)
    py = shell_sum(images_ft.abs().square().mean(0).to(sigma2.dtype), shells, nsh) / npix
    c2 = (torch.ones_like(py) if ctf is None
          else shell_sum(ctf.square().mean(0).to(sigma2.dtype), shells, nsh) / npix)
    return ((py - sigma2) / c2.clamp_min(1e-3)).clamp_min(0)


def random_start(size: int, k_max: int, generator: torch.Generator, target_power: torch.Tensor | None = None,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """A seeded random start ``(d, d, d)``: white Gaussian noise low-passed to shell ``k_max``, inside a
    soft sphere of radius ``0.35·d``; with ``target_power`` ``(d//2+1,)``, scaled so its power over
    shells ``1..k_max`` matches it."""
    noise = torch.randn((size, size, size), generator=generator, dtype=torch.float64)
    lp = lowpass_filter_3d(size, k_max / size, width=1.0 / size).double()
    vol = ifft3_centered(fft3_centered(noise) * lp).real * spherical_mask(size, 0.35 * size, 3.0).double()
    if target_power is not None:
        ps = power_spectrum(vol)
        t = target_power.double().cpu()
        ratio = t[1:k_max + 1].sum() / ps[1:k_max + 1].sum().clamp_min(1e-300)
        vol = vol * math.sqrt(float(ratio)) if float(ratio) > 0 else vol
    return vol.to(device=device, dtype=dtype)


@dataclass
class AbinitConfig:
    """Settings of :func:`ab_initio` (module docstring; cryoSPARC's ab initio defaults where it has one)."""

    n_classes: int = 1
    n_iterations: int = 300
    batch_size: int = 90
    final_batch_size: int = 300
    initial_resolution: float = 35.0
    final_resolution: float = 12.0
    grid_level: int = 2
    max_shift: float = 3.0
    shift_step: float = 1.0
    eta_min: float = 0.1
    tau2_fudge: float = 4.0
    mass: float = 0.99
    max_significant: int = 200
    pad: int = 2
    seed: int = 0

    def k_schedule(self, iteration: int, size: int, pixel_size: float) -> int:
        """Shell limit at ``iteration`` (0-based) for images of ``size`` px at ``pixel_size`` Å/px."""
        k0 = shell_of(self.initial_resolution, size, pixel_size)
        k1 = shell_of(self.final_resolution, size, pixel_size)
        ramp = max(1, int(0.75 * self.n_iterations) - 1)
        return int(round(k0 + (k1 - k0) * min(1.0, iteration / ramp)))

    def batch(self, iteration: int) -> int:
        return self.batch_size if iteration < self.n_iterations // 2 else self.final_batch_size

    def step_size(self, iteration: int) -> float:
        return max(1.0 / (iteration + 1), self.eta_min)


@dataclass
class AbinitState:
    """Everything an ab initio run needs to continue: the per-class running statistics (staging grids
    of :class:`FourierAccumulator`), the maps, ``σ²``, the class priors, the iteration counter, the
    batch-sampling generator's state, and the per-iteration history."""

    volumes: torch.Tensor
    staging: list[torch.Tensor]
    sigma2: torch.Tensor
    class_prior: torch.Tensor
    iteration: int
    generator_state: torch.Tensor
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"volumes": self.volumes.cpu(), "staging": [s.cpu() for s in self.staging],
                "sigma2": self.sigma2.cpu(), "class_prior": self.class_prior.cpu(), "iteration": self.iteration,
                "generator_state": self.generator_state, "history": self.history}

    @classmethod
    def from_dict(cls, d: dict, device) -> AbinitState:
        return cls(volumes=d["volumes"].to(device), staging=[s.to(device) for s in d["staging"]],
                   sigma2=d["sigma2"].to(device), class_prior=d["class_prior"], iteration=int(d["iteration"]),
                   generator_state=d["generator_state"], history=list(d["history"]))


class AbInitio:
    """The ab initio loop over a :class:`Particles` set (module docstring): build with the data and a
    config, then :meth:`init` (or :meth:`load` a saved state) and :meth:`step` until
    :attr:`done`; :meth:`result_volumes` gives the maps at the full box.

    Memory: one mini-batch of images at the cropped box ``d`` and its posterior
    (:func:`~cryolens.inference.estep.class_pose_posterior`), plus ``K`` padded staging grids
    ``(2d)³ × 3`` reals.
    """

    def __init__(self, particles: Particles, config: AbinitConfig, device=None, dtype=torch.float32):
        self.particles, self.cfg = particles, config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        d0, px0 = particles.box_size, particles.pixel_size
        k_final = shell_of(config.final_resolution, d0, px0)
        self.size = min(d0, 2 * k_final + (2 * k_final) % 2)
        self.size += self.size % 2
        self.pixel_size = px0 * d0 / self.size
        self.rotations = so3_grid(config.grid_level, device=self.device, dtype=dtype)
        # the shift grid in working-box pixels (max_shift, shift_step are given in the particles' pixels)
        self.shifts = translation_grid(config.max_shift * self.size / d0, config.shift_step * self.size / d0,
                                       device=self.device, dtype=dtype)
        self.state: AbinitState | None = None

    # --- data -------------------------------------------------------------------------------------------
    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = read_images(self.particles, idx).to(device=self.device, dtype=self.dtype)
        y = fourier_crop_images(fft2_centered(images), self.size)
        c = None
        if self.particles.ctf is not None:
            c = ctf_2d(self.particles.ctf[torch.as_tensor(idx)].to(self.device), self.size, self.pixel_size,
                       device=self.device, dtype=self.dtype)
        return y, c

    def init(self, init_volumes: torch.Tensor | None = None) -> AbinitState:
        """Fresh state: ``σ²`` from the mean power of up to 1,000 images; ``K`` seeded random starts
        (:func:`random_start`), or ``init_volumes`` ``(K, D, D, D)`` (a warm start, resized to the
        working box)."""
        cfg, n = self.cfg, len(self.particles)
        gen = torch.Generator().manual_seed(int(cfg.seed))
        sample = torch.randperm(n, generator=gen)[:min(n, 1000)].sort().values.numpy()
        ys, cs = [], []
        for s in range(0, sample.size, 250):
            y, c = self._batch(sample[s:s + 250])
            ys.append(y)
            cs.append(c)
        y = torch.cat(ys)
        c = None if cs[0] is None else torch.cat(cs)
        shells = shell_index_2d(self.size, device=self.device)
        nsh = self.size // 2 + 1
        npix = shell_sum(torch.ones(self.size, self.size, device=self.device, dtype=self.dtype), shells, nsh)
        sigma2 = shell_sum(y.abs().square().mean(0), shells, nsh) / npix
        # white-noise floor from the outer shells gives the signal estimate used to scale the starts
        noise_floor = sigma2[-max(2, nsh // 5):].mean() * torch.ones_like(sigma2)
        target = signal_power(y, c, noise_floor)
        k0 = cfg.k_schedule(0, self.size, self.pixel_size)
        if init_volumes is not None:
            vols = torch.stack([resize_volume(v.to(self.device, self.dtype), self.size) for v in init_volumes])
        else:
            vols = torch.stack([random_start(self.size, k0, gen, target, self.device, self.dtype)
                                for _ in range(cfg.n_classes)])
        staging = [FourierAccumulator(self.size, cfg.pad, self.device, self.dtype).staging
                   for _ in range(vols.shape[0])]
        self.state = AbinitState(volumes=vols, staging=staging, sigma2=sigma2,
                                 class_prior=torch.full((vols.shape[0],), 1.0 / vols.shape[0], dtype=torch.float64),
                                 iteration=0, generator_state=gen.get_state())
        return self.state

    def load(self, state: dict) -> AbinitState:
        self.state = AbinitState.from_dict(state, self.device)
        return self.state

    @property
    def done(self) -> bool:
        return self.state is not None and self.state.iteration >= self.cfg.n_iterations

    # --- one step ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> dict:
        """One mini-batch: E-step over (class, rotation, shift), running-statistics update, new maps."""
        st, cfg = self.state, self.cfg
        t, n = st.iteration, len(self.particles)
        gen = torch.Generator()
        gen.set_state(st.generator_state)
        b = min(cfg.batch(t), n)
        idx = torch.randperm(n, generator=gen)[:b].sort().values.numpy()
        st.generator_state = gen.get_state()
        k_t = cfg.k_schedule(t, self.size, self.pixel_size)
        eta = cfg.step_size(t)
        y, c = self._batch(shard(idx))  # this rank's share of the mini-batch (all of it in one process)
        size, dev, dt = self.size, self.device, self.dtype
        slicers = [as_slicer(prepare_volume_ft(v, cfg.pad), size) for v in st.volumes]
        log_prior = torch.log(st.class_prior.clamp_min(1e-300)).to(dev, dt)
        post = class_pose_posterior(y, slicers, self.rotations, self.shifts, st.sigma2, ctf=c, k_max=k_t,
                                    log_class_prior=log_prior, mass=cfg.mass, max_significant=cfg.max_significant)
        keep, w_all = post.pairs(0.0)
        bi, ki = keep.nonzero(as_tuple=True)
        pairs = (bi, post.class_index[bi, ki], post.rotation_index[bi, ki], post.shift_index[bi, ki], w_all[bi, ki])
        st.volumes, power = self._m_step(y, c, pairs, w_all.sum(1), slicers, k_t, eta * (n / b))
        npix = shell_sum(torch.ones(size, size, device=dev, dtype=dt), shell_index_2d(size, device=dev), size // 2 + 1)
        batch_sigma2 = noise_power(shell_sum(power, shell_index_2d(size, device=dev), size // 2 + 1), b, npix)
        st.sigma2 = (1 - eta) * st.sigma2 + eta * batch_sigma2.to(dt)
        means = torch.cat([post.class_probability.double().mean(0), post.log_evidence.double().mean()[None],
                           post.weight[:, 0].double().mean()[None]]).cpu()
        if is_distributed():  # each rank's means weighted by its share, summed: the whole mini-batch's
            means.mul_(y.shape[0] / b)
            all_reduce_sum(means)
        st.class_prior = (1 - eta) * st.class_prior + eta * means[:-2]
        st.iteration += 1
        record = {"iteration": st.iteration, "k_max": k_t, "resolution_A": size * self.pixel_size / max(k_t, 1),
                  "batch_size": b, "step_size": eta, "mean_log_evidence": float(means[-2]),
                  "mean_max_weight": float(means[-1]), "class_prior": st.class_prior.tolist()}
        st.history.append(record)
        return record

    def _m_step(self, y, c, pairs, image_weight, slicers, k_t: int, gain: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Running-statistics update of one batch's weighted pairs (module docstring: ``S ← (1 − η) S +
        η (N / B) S_batch``, ``gain = η N / B``) and the new maps; returns ``(maps, residual power (d, d))``."""
        st, cfg = self.state, self.cfg
        eta = cfg.step_size(st.iteration)
        tau2 = torch.stack([power_spectrum(v) for v in st.volumes])
        lam = map_prior(st.sigma2, tau2, cfg.tau2_fudge * cfg.pad ** 3)[0]
        lam[:, k_t + 1:] = float("inf")
        accs = [FourierAccumulator(self.size, cfg.pad, self.device, self.dtype) for _ in range(st.volumes.shape[0])]
        joined = is_distributed()  # ranks insert into zeroed sums and join them below; one process inserts
        if not joined:             # straight into the decayed running sums (the same up to rounding)
            for acc, staging in zip(accs, st.staging):
                acc.staging = staging.mul_(1 - eta)

        def insert(k: int, used: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> None:
            insert_aggregates(accs[k], s1 * gain, s2 * gain, self.rotations[used])

        power = class_sums(y, c, pairs, image_weight, self.shifts, self.rotations, slicers, insert, chunk=None,
                           ctf_first=True)
        all_reduce_sum(power)
        vols = []
        for kc, acc in enumerate(accs):
            if joined:  # the whole mini-batch's sums, then S ← (1 − η) S + η (N / B) S_batch
                acc.all_reduce()
                acc.staging = st.staging[kc].mul_(1 - eta).add_(acc.staging)
            st.staging[kc] = acc.staging
            vols.append(acc.reconstruct(lam[kc]) if acc.has_weight() else st.volumes[kc])
        return torch.stack(vols), power

    @torch.no_grad()
    def assign(self, batch_size: int = 200, progress=None) -> dict[str, torch.Tensor]:
        """MAP (class, rotation, shift) of every image under the current maps, at the final shell
        limit: ``{"labels" (N,), "rotations" (N, 3, 3), "shifts" (N, 2) px of the particles' box,
        "class_probability" (N, K)}``, on the CPU."""
        st, n = self.state, len(self.particles)
        k_t = self.cfg.k_schedule(self.cfg.n_iterations, self.size, self.pixel_size)
        slicers = [as_slicer(prepare_volume_ft(v, self.cfg.pad), self.size) for v in st.volumes]
        log_prior = torch.log(st.class_prior.clamp_min(1e-300)).to(self.device, self.dtype)
        out = {"labels": [], "rotations": [], "shifts": [], "class_probability": []}
        mine = shard(np.arange(n))  # this rank's images (all in one process); the rows are joined below
        for s in range(0, mine.size, batch_size):
            idx = mine[s:s + batch_size]
            y, c = self._batch(idx)
            post = class_pose_posterior(y, slicers, self.rotations, self.shifts, st.sigma2, ctf=c, k_max=k_t,
                                        log_class_prior=log_prior, mass=self.cfg.mass, max_significant=1)
            out["labels"].append(post.class_index[:, 0].cpu())
            out["rotations"].append(self.rotations[post.rotation_index[:, 0]].cpu())
            out["shifts"].append(self.shifts[post.shift_index[:, 0]].cpu() * (self.particles.box_size / self.size))
            out["class_probability"].append(post.class_probability.cpu())
            if progress is not None:
                progress.update(len(idx))
        return {k: gather_rows(torch.as_tensor(mine), torch.cat(v), n) for k, v in out.items()}

    def result_volumes(self) -> torch.Tensor:
        """``(K, D, D, D)`` the current maps at the particles' box (Fourier zero-padded)."""
        return torch.stack([resize_volume(v, self.particles.box_size) for v in self.state.volumes])


@torch.no_grad()
def ab_initio(particles: Particles, config: AbinitConfig | None = None, *, init_volumes: torch.Tensor | None = None,
              device=None, progress: bool = False) -> tuple[torch.Tensor, AbinitState]:
    """Run :class:`AbInitio` to the end in memory (no checkpoints; the recipe adds them). Returns the
    maps ``(K, D, D, D)`` at the particles' box and the final state."""
    from tqdm.auto import tqdm

    run = AbInitio(particles, config or AbinitConfig(), device)
    run.init(init_volumes)
    with tqdm(total=run.cfg.n_iterations, desc="ab initio", disable=not (progress and is_main())) as bar:
        while not run.done:
            rec = run.step()
            bar.update(1)
            bar.set_postfix(res=f"{rec['resolution_A']:.1f}Å")
    return run.result_volumes(), run.state


def run_ab_initio(particles: Particles, config: AbinitConfig, checkpoint=None, every: int = 10,
                  init_volumes: torch.Tensor | None = None, device=None, progress: bool = True,
                  resume: bool = False) -> AbInitio:
    """:class:`AbInitio` to the end, its state saved to the path ``checkpoint`` (if given) every ``every``
    iterations and at the end; ``resume`` continues from it (made with the same options)."""
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..io.checkpoint import load_checkpoint, save_checkpoint

    ab = AbInitio(particles, config, device)
    made = {k: v for k, v in asdict(config).items() if k not in ("mass", "max_significant", "pad")}
    if resume and checkpoint is not None and checkpoint.is_file():
        saved = load_checkpoint(checkpoint)
        if saved["config"] != made:
            raise InputError(f"{checkpoint}: made with different ab initio options")
        ab.load(saved["state"])
    else:
        ab.init(init_volumes)
    with tqdm(total=config.n_iterations, initial=ab.state.iteration, desc="ab initio",
              disable=not (progress and is_main())) as bar:
        while not ab.done:
            rec = ab.step()
            bar.update(1)
            bar.set_postfix(res=f"{rec['resolution_A']:.1f}Å", maxw=f"{rec['mean_max_weight']:.2f}")
            if checkpoint is not None and is_main() and (ab.state.iteration % max(1, every) == 0 or ab.done):
                save_checkpoint(checkpoint, {"config": made, "state": ab.state.to_dict()})
    return ab

"""The one training engine of every learned method.

Contract: a model is an ``nn.Module`` whose ``forward(batch) -> dict[str, Tensor]`` returns its loss
terms, ``"loss"`` (the scalar optimised) first; every term is logged. A batch is a dict (see
:class:`ParticleBatches`): ``index (B,)`` int64, ``image (B, D, D)`` float32 real space ``[n, y, x]``,
``shift (B, 2)`` px, and when known ``rotation (B, 3, 3)`` (image → volume frame) and ``ctf``
(:class:`~cryolens.imaging.ctf.CTFParams`). A model may define ``param_groups()`` (per-group
learning rates), ``on_epoch_start(epoch, trainer)`` (a schedule, e.g. frequency marching) and
``on_epoch_end(epoch, trainer)`` (called before the epoch's checkpoint is written), ``before_step(batch,
trainer) -> dict[str, Tensor]`` (updates of its own before each engine step, e.g. a GAN critic's steps; the
terms it returns are logged with the step's) and ``inner_optimizers() -> dict[str, Optimizer]`` (the
optimisers such updates use, outside the engine's: checkpointed and resumed with it). Hidden variables that
are inferred rather than learned as parameters (e.g. poses found by a search) are
:class:`~cryolens.inference.strategy.InferenceStrategy` callbacks given to the :class:`Trainer`
(``strategies``): their epoch hooks run after the model's, ``before_batch`` fills their values into each
batch, and their ``state_dict`` is checkpointed.

What the engine does (nanoGPT style, the inner loop is :meth:`Trainer.fit`): streams batches from the
memory-mapped stack with ``DataLoader`` workers; Adam / AdamW; autocast (bf16, or fp16 with a gradient
scaler) on CUDA; a checkpoint every epoch through :mod:`cryolens.io.checkpoint` holding the model,
optimiser, scaler, RNG states and the sampler's (seed, epoch), copied at wall-clock times inside
:func:`~cryolens.inference.snapshots.checkpoint_snapshots` (the benchmark's score against time);
``resume=True`` continues from it bit-for-bit on the CPU (the log is cut back to the checkpoint); one
JSON line per step with every loss term (``log.jsonl``); a tqdm bar with images/s; DDP when a process
group is initialised (:mod:`~cryolens.inference.distributed`), each rank taking ``batch_size / world`` images of every
global batch through a ``DistributedSampler``, so K processes follow the same trajectory as one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.ctf import CTFParams
from ..io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..io.dataset import _Stacks, read_images
from ..io.particles import Particles
from .distributed import world
from .snapshots import take_snapshot
from .strategy import InferenceStrategy


class ParticleBatches(Dataset):
    """``dataset[list of indices]`` → one batch dict (engine docstring), read with
    :func:`~cryolens.io.dataset.read_images` (contiguous runs of the memory map as single slices).
    Safe in ``DataLoader`` workers (the memory maps are reopened after pickling)."""

    def __init__(self, particles: Particles):
        self.particles = particles
        self._stacks = _Stacks(particles.image_files)

    def __len__(self) -> int:
        return len(self.particles)

    def __getitem__(self, indices) -> dict:
        p = self.particles
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        batch = {"index": idx, "image": read_images(p, idx.numpy(), self._stacks),
                 "shift": p.shifts[idx] if p.shifts is not None else torch.zeros(len(idx), 2)}
        if p.rotations is not None:
            batch["rotation"] = p.rotations[idx]
        if p.ctf is not None:
            batch["ctf"] = p.ctf[idx]
        return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor (and :class:`CTFParams`) of a batch to ``device``."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, (torch.Tensor, CTFParams)):
            v = v.to(device)
        out[k] = v
    return out


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``), or None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def _bf16_speedup_measured(size: int = 256, reps: int = 7) -> float:
    """float32 time / bfloat16-autocast time of a ``(16·size, size) × (size, size)`` linear layer, best
    of ``reps`` each, on one thread."""
    x, w = torch.randn(16 * size, size), torch.randn(size, size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def best(fn) -> float:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        fp32 = best(lambda: nn.functional.linear(x, w))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = best(lambda: nn.functional.linear(x, w))
    finally:
        torch.set_num_threads(threads)
    return fp32 / max(bf16, 1e-9)


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively, so that ``cpu_amp`` speeds training up: on Linux
    from the feature flags (x86 ``avx512_bf16`` or ``amx_bf16``, ARM ``bf16``); elsewhere by timing a
    linear layer under bfloat16 autocast against float32 (native: about 2× faster; emulated by
    PyTorch: about 10× slower, measured on an AMD EPYC without AVX512-BF16)."""
    flags = _cpu_flags()
    if flags is not None:
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return _bf16_speedup_measured() > 1.0


@dataclass
class TrainConfig:
    """Engine settings. batch_size: the *global* batch (split over DDP ranks). optimizer: ``adam`` or
    ``adamw``. amp: autocast on CUDA (``bf16`` when supported, else ``fp16`` with a gradient scaler;
    ignored on the CPU). cpu_amp: ``bf16`` autocast on the CPU (matrix products in bfloat16 with fp32
    weights and accumulation: about 2-3x faster MLPs where the CPU has AVX512-BF16 or AMX; off by
    default since bfloat16 keeps ~3 significant digits; ignored with a warning where
    :func:`cpu_bf16_native` finds bfloat16 emulated, i.e. slower than float32). grad_clip: max gradient norm (0 = none).
    epoch_images: images drawn per epoch, the head of that epoch's shuffled order (0 = all of them): for
    datasets too large for full passes, and for benchmarks that must not grow with N."""

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"
    amp: bool = True
    cpu_amp: bool = False
    seed: int = 0
    num_workers: int = 0
    grad_clip: float = 0.0
    epoch_images: int = 0


def make_optimizer(groups: list[dict], config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """``config.optimizer`` (Adam or AdamW, ``lr``, ``weight_decay``) over the parameter ``groups``. On the
    CPU the fused kernel: one pass over each parameter instead of about ten elementwise passes, the same
    update to float32 rounding."""
    opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(config.optimizer.lower())
    if opt is None:
        raise InputError(f"optimizer {config.optimizer!r}: expected adam or adamw")
    return opt(groups, lr=config.lr, weight_decay=config.weight_decay,
               fused=True if torch.device(device).type == "cpu" else None)


class Trainer:
    """Train ``model`` (engine docstring) on ``particles``, writing ``checkpoint.pt`` and ``log.jsonl``
    into ``out_dir``. ``progress``: show the tqdm bar. ``strategies``: the
    :class:`~cryolens.inference.strategy.InferenceStrategy` callbacks, called in order."""

    def __init__(self, model: nn.Module, particles: Particles, config: TrainConfig, out_dir: str | Path,
                 device: torch.device | str | None = None, progress: bool = True,
                 strategies: Sequence[InferenceStrategy] = ()):
        self.model, self.particles, self.cfg = model, particles, config
        self.strategies = list(strategies)
        self.out = Path(out_dir)
        self.device = torch.device(device or "cpu")
        self.progress = progress
        self.rank, self.world = world()
        if config.batch_size % self.world:
            raise InputError(f"batch size {config.batch_size} is not divisible by the {self.world} processes")
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.log_path = self.out / "log.jsonl"
        self.epoch = 0  # epochs completed
        self.step = 0
        self.model.to(self.device)
        groups = model.param_groups() if hasattr(model, "param_groups") else [{"params": list(model.parameters())}]
        self.optimizer = make_optimizer(groups, config, self.device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if cuda and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif self.device.type == "cpu" and config.cpu_amp:
            if cpu_bf16_native():
                self.amp_dtype = torch.bfloat16
            else:  # emulated bfloat16: autocast would make training several times slower, not faster
                warnings.warn("cpu_amp ignored: this CPU has no native bfloat16 matrix products (no AVX512-BF16, "
                              "AMX or ARM BF16), where bfloat16 autocast is several times slower than float32; "
                              "training in float32", RuntimeWarning, stacklevel=2)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.sampler = DistributedSampler(range(len(particles)), num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=config.seed, drop_last=False)
        self.net = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if cuda else None)

    # --- checkpoint / resume ---
    def state(self) -> dict:
        out = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
               "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step, "rng": rng_state(),
               "sampler": {"seed": self.cfg.seed, "epoch": self.epoch}, "train_config": asdict(self.cfg)}
        if self.strategies:
            out["strategies"] = [s.state_dict() for s in self.strategies]
        if hasattr(self.model, "inner_optimizers"):
            out["inner_optimizers"] = {k: o.state_dict() for k, o in self.model.inner_optimizers().items()}
        return out

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.checkpoint_path, self.state())
            take_snapshot(self.checkpoint_path, self.epoch, self.step)  # only inside checkpoint_snapshots

    def resume(self) -> bool:
        """Load ``checkpoint.pt`` if present (returns whether it was) and cut the log back to it."""
        if not self.checkpoint_path.exists():
            return False
        ck = load_checkpoint(self.checkpoint_path, map_location="cpu")  # load_state_dict moves to the device
        self._load_model_state(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.strategies:
            states = ck.get("strategies")
            if states is None or len(states) != len(self.strategies):
                raise InputError(f"{self.checkpoint_path}: no state of this run's inference strategies; resume "
                                 "with the recipe and options the run was started with")
            for strategy, state in zip(self.strategies, states):
                strategy.load_state_dict(state)
        if hasattr(self.model, "inner_optimizers"):
            for name, opt in self.model.inner_optimizers().items():
                opt.load_state_dict(ck["inner_optimizers"][name])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        ck["rng"]["torch"] = ck["rng"]["torch"].cpu()
        set_rng_state(ck["rng"])
        if self.rank == 0 and self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
            keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= self.step]
            self.log_path.write_text("".join(ln + "\n" for ln in keep))
        return True

    def _load_model_state(self, state: dict) -> None:
        """The checkpoint's weights into the model, or one line saying where the shapes or names differ
        (a resume with other model options than the run was started with)."""
        mine = self.model.state_dict()
        for name, value in state.items():
            if name in mine and tuple(mine[name].shape) != tuple(value.shape):
                raise InputError(f"{self.checkpoint_path}: {name} is {tuple(value.shape)} in the checkpoint but "
                                 f"{tuple(mine[name].shape)} with these options; resume with the options the run "
                                 "was started with (its config.json)")
        missing, unexpected = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or unexpected:
            raise InputError(f"{self.checkpoint_path}: parameters {'missing' if missing else 'unexpected'} with "
                             f"these options ({(missing or unexpected)[0]} …); resume with the options the run was "
                             "started with (its config.json)")
        self.model.load_state_dict(state)

    def epoch_indices(self) -> int:
        """Images this rank draws per epoch."""
        n = len(self.sampler)
        return min(n, -(-self.cfg.epoch_images // self.world)) if self.cfg.epoch_images > 0 else n

    def loader(self) -> DataLoader:
        order = _Head(self.sampler, self.epoch_indices())
        batches = BatchSampler(order, self.cfg.batch_size // self.world, drop_last=False)
        return DataLoader(ParticleBatches(self.particles), sampler=batches, batch_size=None,
                          num_workers=self.cfg.num_workers, persistent_workers=False)

    # --- the loop ---
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``config.epochs`` epochs are complete; returns the log records of this call."""
        if not (resume and self.resume()):
            torch.manual_seed(self.cfg.seed + self.rank)
            np.random.seed(self.cfg.seed + self.rank)
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                self.log_path.write_text("")
        records: list[dict] = []
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        log = self.log_path.open("a") if self.rank == 0 else None
        try:
            while self.epoch < self.cfg.epochs:
                if hasattr(self.model, "on_epoch_start"):
                    self.model.on_epoch_start(self.epoch, self)
                for strategy in self.strategies:
                    strategy.on_epoch_start(self.epoch, self)
                self.sampler.set_epoch(self.epoch)
                per_epoch = self.epoch_indices() * self.world
                t0 = time.time()
                self._train_epoch(per_epoch, autocast, records, log)
                if hasattr(self.model, "on_epoch_end"):
                    self.model.on_epoch_end(self.epoch, self)
                for strategy in self.strategies:
                    strategy.on_epoch_end(self.epoch, self)
                self.epoch += 1
                if log is not None:
                    log.write(json.dumps({"epoch": self.epoch, "step": self.step, "epoch_end": True,
                                          "seconds": time.time() - t0,
                                          "images_per_s": per_epoch / max(time.time() - t0, 1e-9)}) + "\n")
                    log.flush()
                self.save()
        finally:
            if log is not None:
                log.close()
        return records

    def _train_epoch(self, per_epoch: int, autocast, records: list[dict], log) -> None:
        """One pass over this epoch's batches: a step each, a record each (appended, and written to ``log``)."""
        bar = tqdm(total=per_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   unit="img", disable=not self.progress or self.rank != 0, leave=False)
        for batch in self.loader():
            batch = to_device(batch, self.device)
            with autocast:
                for strategy in self.strategies:
                    batch = strategy.before_batch(batch, self)
                inner = self.model.before_step(batch, self) if hasattr(self.model, "before_step") else {}
                terms = self.net(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            n = len(batch["index"]) * self.world
            rec = {"epoch": self.epoch + 1, "step": self.step,
                   **{k: float(v.detach()) for k, v in {**inner, **terms}.items()}}
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"loss became {rec['loss']} at step {self.step}: lower the "
                                         "learning rate or turn off amp")
            records.append(rec)
            if log is not None:
                log.write(json.dumps(rec) + "\n")
            bar.update(n)
            bar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
        bar.close()


class _Head:
    """The first ``n`` indices of a sampler's current order (a sampler itself: ``len`` and ``iter``)."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, int(n)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.n)


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl`` (per-step records and per-epoch ``epoch_end`` records)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]

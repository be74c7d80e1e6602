"""cryoDRGN (Zhong et al. 2021, Nat. Methods; public code 4.3): a neural volume ``V_θ(k, z)`` trained
on images with known poses and CTFs, with ``z`` inferred per image by

- ``vae``: an amortized encoder ``q(z | image)`` and a β-weighted KL to ``N(0, I)`` (``train_vae``);
- ``homo``: no ``z`` at all (``train_nn``);
- ``autodecoder``: one free ``z`` per image, MSE only (``train_dec``: a modal estimate);
- ``variational-autodecoder``: a mean and log-variance per image with the KL (review C.4.2).

Composition: :class:`~cryolens.volumes.neural.NeuralField` × (:mod:`~cryolens.inference.encoders`) ×
the Hartley likelihood and KL of :mod:`~cryolens.inference.losses`, trained by the one engine
(:mod:`~cryolens.inference.engine`). Loss per batch: ``mean MSE + β · mean KL / P`` with ``P`` the number
of lattice pixels (cryoDRGN's scaling), ``β = 1/zdim`` by default. Images are normalised by the std of
their Hartley transforms (measured on up to 1,000 images), as cryoDRGN does.

Run folder: ``checkpoint.pt`` (weights, optimiser, RNG: resumable), ``model.json`` (what
:func:`load_trained` needs), ``log.jsonl``, ``z.npy`` (``(N, zdim)`` posterior means, STAR order),
``map.mrc`` (at the mean of ``z``, or the one map of a homogeneous run), ``training_curves.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..inference.encoders import CNNEncoder, LatentTable, MLPEncoder
from ..inference.engine import ParticleBatches, Trainer, TrainConfig, read_log, to_device
from ..inference.losses import centered_hartley, ctf_on_lattice, image_mse, kl_standard_normal, reparametrize
from ..io.particles import Particles
from ..volumes.lattice import SliceLattice
from ..volumes.neural import NeuralField

MODES = ("vae", "homo", "autodecoder", "variational-autodecoder")

# published defaults (METHODS.md: cryoDRGN 4.3 train_vae / train_nn / train_dec)
DEFAULTS = {
    "zdim": 8, "enc_layers": 3, "enc_dim": 1024, "dec_layers": 3, "dec_dim": 1024, "encoder": "mlp",
    "pe": "gaussian", "pe_dim": 0, "feat_sigma": 0.5, "domain": "fourier", "beta": None,
    "epochs": 20, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.0, "optimizer": "adam", "amp": True,
    "cpu_amp": False, "seed": 0, "num_workers": 0, "epoch_images": 0, "z_lr": 1e-2, "resume": False,
    "norm_images": 1000,
}


class CryoDRGN(nn.Module):
    """The trainable model: a neural field, and an encoder / latent table by ``mode`` (module docstring).
    ``forward(batch) → {"loss", "mse", "kl"}`` (the engine's contract)."""

    def __init__(self, box_size: int, pixel_size: float, n_images: int, config: dict, mode: str = "vae"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.pixel_size = mode, float(pixel_size)
        zdim = 0 if mode == "homo" else int(config["zdim"])
        if mode != "homo" and zdim < 1:
            raise InputError(f"zdim {zdim}: a heterogeneous model needs zdim >= 1")
        self.zdim = zdim
        self.beta = float(config["beta"]) if config.get("beta") is not None else (1.0 / zdim if zdim else 0.0)
        self.lattice = SliceLattice(box_size)
        self.field = NeuralField(box_size, zdim, int(config["dec_layers"]), int(config["dec_dim"]), config["pe"],
                                 int(config["pe_dim"]) or None, float(config["feat_sigma"]), config["domain"],
                                 seed=int(config["seed"]))
        self.encoder = None
        self.table = None
        if mode == "vae":
            if config["encoder"] == "mlp":
                self.encoder = MLPEncoder(self.lattice, zdim, int(config["enc_layers"]), int(config["enc_dim"]))
            elif config["encoder"] == "cnn":
                self.encoder = CNNEncoder(box_size, zdim)
            else:
                raise InputError(f"encoder {config['encoder']!r}: expected mlp or cnn")
        elif mode in ("autodecoder", "variational-autodecoder"):
            self.table = LatentTable(n_images, zdim, variational=mode == "variational-autodecoder",
                                     seed=int(config["seed"]))
        self.z_lr = float(config.get("z_lr", 1e-2))
        self.register_buffer("norm", torch.ones(()))

    def _lattice(self, device) -> SliceLattice:
        if self.lattice.pixels.device != device:
            self.lattice.to(device)
        return self.lattice

    def set_norm(self, value: float) -> None:
        """Images are divided by ``value`` (the Hartley std); maps are rendered in image units."""
        self.norm.fill_(float(value))
        self.field.output_scale.fill_(float(value))

    def param_groups(self) -> list[dict]:
        groups = [{"params": [p for n, p in self.named_parameters() if not n.startswith("table.")]}]
        if self.table is not None:
            groups.append({"params": list(self.table.parameters()), "lr": self.z_lr})
        return groups

    def targets(self, batch: dict) -> torch.Tensor:
        """Centred, normalised Hartley images ``(B, D, D)`` of a batch."""
        return centered_hartley(batch["image"], batch.get("shift")) / self.norm

    def posterior(self, batch: dict,
                  hartley: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(μ, logvar)`` of ``z`` for a batch (``None`` where the mode has none)."""
        if self.encoder is not None:
            lat = self._lattice(batch["image"].device)
            h = self.targets(batch) if hartley is None else hartley
            return self.encoder(lat.scatter(lat.gather(h)))
        if self.table is not None:
            return self.table(batch["index"])
        return None, None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        lat = self._lattice(batch["image"].device)
        h = self.targets(batch)
        target = lat.gather(h)
        mu, logvar = self.posterior(batch, h)
        z = mu
        if logvar is not None and self.training:
            z = reparametrize(mu, logvar)
        pred = self.field.slices(batch["rotation"], z, lat)
        if "ctf" in batch:
            pred = pred * ctf_on_lattice(batch["ctf"], lat, self.pixel_size)
        mse = image_mse(pred, target).mean()
        kl = kl_standard_normal(mu, logvar).mean() if logvar is not None else torch.zeros((), device=mse.device)
        return {"loss": mse + self.beta * kl / len(lat), "mse": mse, "kl": kl}


def sample_images(particles: Particles, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` randomly chosen images ``(n, D, D)`` float32 (seeded; for data normalisation)."""
    from ..io.dataset import read_images

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(particles), size=min(n, len(particles)), replace=False))
    return read_images(particles, idx)


def hartley_std(particles: Particles, n: int = 1000, seed: int = 0) -> float:
    """Std of the Hartley transforms of up to ``n`` randomly chosen images (cryoDRGN's normalisation)."""
    return float(centered_hartley(sample_images(particles, n, seed)).std())


def training_summary(records: list[dict]) -> dict:
    """``final_loss`` (and every other term of the last step, as ``final_<term>``) and the mean
    ``images_per_s`` of the epochs, from a run's ``log.jsonl`` records (``None`` where there are none)."""
    steps = [r for r in records if not r.get("epoch_end")]
    ends = [r for r in records if r.get("epoch_end")]
    last = {f"final_{k}": v for k, v in steps[-1].items() if k not in ("epoch", "step")} if steps else {}
    return {"final_loss": None, **last,
            "images_per_s": float(np.mean([r["images_per_s"] for r in ends])) if ends else None}


@torch.no_grad()
def infer_latents(model: CryoDRGN, particles: Particles, device, batch_size: int = 256) -> np.ndarray | None:
    """``(N, zdim)`` float32 posterior means of ``z`` in particle (STAR) order; ``None`` if homogeneous."""
    if model.zdim == 0:
        return None
    if model.table is not None:
        return model.table.mu.detach().cpu().numpy().astype(np.float32)
    was = model.training
    model.eval()
    data = ParticleBatches(particles)
    out = []
    for s in range(0, len(particles), batch_size):
        batch = to_device(data[list(range(s, min(s + batch_size, len(particles))))], device)
        out.append(model.posterior(batch)[0].float().cpu())
    model.train(was)
    return torch.cat(out).numpy().astype(np.float32)


def build_model(box_size: int, pixel_size: float, n_images: int, config: dict, mode: str) -> CryoDRGN:
    """A fresh :class:`CryoDRGN` (the seed of ``config`` fixes the initial weights)."""
    torch.manual_seed(int(config["seed"]))
    return CryoDRGN(box_size, pixel_size, n_images, config, mode)


def train_config(config: dict) -> TrainConfig:
    """The engine settings from a recipe config."""
    return TrainConfig(epochs=int(config["epochs"]), batch_size=int(config["batch_size"]), lr=float(config["lr"]),
                       weight_decay=float(config["weight_decay"]), optimizer=str(config["optimizer"]),
                       amp=bool(config["amp"]), cpu_amp=bool(config["cpu_amp"]), seed=int(config["seed"]),
                       num_workers=int(config["num_workers"]), epoch_images=int(config.get("epoch_images", 0)))


def write_model_json(run, model: CryoDRGN, particles: Particles, config: dict, recipe: str) -> None:
    run.write_json("model.json", {"recipe": recipe, "mode": model.mode, "box_size": particles.box_size,
                                  "pixel_size": particles.pixel_size, "n_images": len(particles),
                                  "config": config})


def finish(model: CryoDRGN, particles: Particles, run, config: dict, device, trainer: Trainer | None):
    """After training (rank 0): latents, map, curves; returns the :class:`MethodOutputs`."""
    from ..analysis.curves import plot_training_curves
    from ..io.mrc import write_volume
    from .registry import MethodOutputs

    model.eval()
    z = infer_latents(model, particles, device)
    if z is not None:
        np.save(run.path("z.npy"), z)
    z_mean = None if z is None else torch.as_tensor(z.mean(0, keepdims=True), device=device)
    volume = model.field.render(z_mean)[0].cpu()
    write_volume(run.path("map.mrc"), volume.numpy(), particles.pixel_size)
    records = read_log(run.path("log.jsonl"))
    if records:
        plot_training_curves(records, run.path("training_curves.png"), f"cryoDRGN ({model.mode})")
    summary = training_summary(records)
    metrics = {"epochs": int(config["epochs"]), "final_loss": summary["final_loss"],
               "final_mse": summary.get("final_mse"), "images_per_s": summary["images_per_s"]}
    field = model.field

    def decode(zb: torch.Tensor | None) -> torch.Tensor:
        return field.render(None if zb is None else zb.to(device))

    return MethodOutputs(pixel_size=particles.pixel_size, volume=volume, latents=z,
                         decode=decode if model.zdim else None, metrics=metrics)


def fit_mode(particles: Particles, known, run, config: dict, device, progress: bool, mode: str, recipe: str):
    """Train one cryoDRGN variant (module docstring) and write its run folder."""
    from ..inference.distributed import is_main

    if particles.rotations is None:
        raise InputError(f"{particles.name}: {recipe} needs poses (rlnAngleRot/Tilt/Psi)")
    device = torch.device(device or "cpu")
    model = build_model(particles.box_size, particles.pixel_size, len(particles), config, mode)
    model.set_norm(hartley_std(particles, int(config["norm_images"]), int(config["seed"])))
    if is_main():
        write_model_json(run, model, particles, config, recipe)
    trainer = Trainer(model, particles, train_config(config), run.root, device, progress)
    trainer.fit(resume=bool(config.get("resume")))
    if not is_main():  # the other DDP ranks write nothing
        from .registry import MethodOutputs
        return MethodOutputs(pixel_size=particles.pixel_size)
    return finish(model, particles, run, config, device, trainer)


def fit(particles, known, run, config, device=None, progress=True):
    """Registry entry point of ``cryodrgn`` (VAE on z)."""
    return fit_mode(particles, known, run, config, device, progress, "vae", "cryodrgn")


def fit_homo(particles, known, run, config, device=None, progress=True):
    """Registry entry point of ``cryodrgn-homo`` (neural volume, no z)."""
    return fit_mode(particles, known, run, config, device, progress, "homo", "cryodrgn-homo")


def fit_autodecoder(particles, known, run, config, device=None, progress=True):
    """Registry entry point of ``cryodrgn-autodecoder`` (``variational`` in config: mean + variance per image)."""
    mode = "variational-autodecoder" if config.get("variational") else "autodecoder"
    return fit_mode(particles, known, run, config, device, progress, mode, "cryodrgn-autodecoder")


@dataclass
class TrainedModel:
    """A trained run, ready to decode. decode: ``z (B, L) float32 → (B, D, D, D)`` float32 real-space maps
    (``None``-z for a homogeneous run → ``(1, D, D, D)``). latents: the run's ``z.npy`` ``(N, L)`` (STAR
    order) or ``None``. pixel_size: Å/px. box_size: ``D``. config: the recipe config it was trained with
    (plus ``recipe`` and ``mode``). model: the module itself."""

    decode: Callable[[torch.Tensor | None], torch.Tensor]
    latents: np.ndarray | None
    pixel_size: float
    box_size: int
    config: dict
    model: nn.Module


def load_trained(run_dir: str | Path, device: torch.device | str | None = None) -> TrainedModel:
    """Load a cryoDRGN-family run folder (``model.json`` + ``checkpoint.pt``; ``z.npy`` when present).
    A folder that is not one is an :class:`~cryolens.errors.InputError` naming it."""
    from ..io.checkpoint import load_checkpoint

    run = Path(run_dir)
    meta_path = run / "model.json"
    if not meta_path.is_file():
        raise InputError(f"{run}: not a trained cryoDRGN-family run (no model.json)")
    meta = json.loads(meta_path.read_text())
    dev = torch.device(device or "cpu")
    cfg = {**DEFAULTS, **meta["config"]}
    model = CryoDRGN(int(meta["box_size"]), float(meta["pixel_size"]), int(meta["n_images"]), cfg, meta["mode"])
    if meta.get("recipe", "").startswith("cryodrgn2"):
        from .cryodrgn2 import attach_pose_buffers
        attach_pose_buffers(model, int(meta["n_images"]))
    ck = load_checkpoint(run / "checkpoint.pt", map_location=dev)
    model.load_state_dict(ck["model"])
    model.to(dev).eval()
    z = np.load(run / "z.npy") if (run / "z.npy").is_file() else None
    field = model.field

    def decode(zb: torch.Tensor | None) -> torch.Tensor:
        if zb is not None and model.zdim == 0:
            zb = None
        if zb is None and model.zdim:
            raise ValueError(f"{run}: this model needs z of dimension {model.zdim}")
        return field.render(None if zb is None else zb.to(dev).float())

    return TrainedModel(decode=decode, latents=z, pixel_size=float(meta["pixel_size"]),
                        box_size=int(meta["box_size"]), config={**cfg, "recipe": meta.get("recipe"),
                                                                 "mode": meta["mode"]}, model=model)

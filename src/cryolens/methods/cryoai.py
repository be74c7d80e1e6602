"""cryoAI (Levy, Poitevin, Martel, Nashed, Peck, Miolane, Ratner, Dunne, Wetzstein 2022, ECCV; authors'
code compSPI/cryoAI): ab initio homogeneous reconstruction with amortized pose inference.

Composition: :class:`~cryolens.inference.pose_encoder.PoseEncoder` (CNN → S2S2 rotation + bounded shift)
× :class:`~cryolens.volumes.neural.NeuralField` (implicit Fourier volume, homogeneous) × the Hartley-lattice
image error with the CTF (:mod:`~cryolens.inference.losses`: ``centered_hartley`` with the predicted shift,
``ctf_on_lattice``, ``image_mse``), symmetrized (``symmetrized_loss``, review §3.3.1), on the one engine
(:mod:`~cryolens.methods.amortized_pose` holds the wiring, poses, refinement and outputs).

Published values (docs/METHODS.md; Levy 2022): Adam, lr 1e-4, batch 64, 100 epochs, symmetrized loss on,
no frequency marching; encoder VGG16 (64 → 512 channels, batch norm) on a 5-channel Gaussian pyramid,
heads FC [512, 256] → 6D and FC [512, 256] → 2D shift; decoder "FourierNet" (SIREN modulant 3 × 256 and
envelope 2 × 256). Deviations here, stated: the encoder is VGG-like with 2 convolutions per block and
16 → 128 channels (``enc_channels``, ``enc_max_channels``: CPU-sized; set 64 / 512 for the paper's width) on
the (optionally low-passed, ``enc_lowpass``) image instead of the pyramid; the decoder is the project's
``NeuralField`` (Gaussian positional encoding + residual MLP, ``dec_layers`` × ``dec_dim`` = 3 × 256, Fourier
output with Friedel symmetry) rather than FourierNet's SIRENs; the loss is on the Hartley lattice (the
Fourier-space Gaussian likelihood) instead of cryoAI's real-space default; the shift head is bounded by
``max_shift`` px (0 = no shifts, the default: set it for data with off-centre particles); 20 epochs by
default instead of 100 (set ``epochs``). Not in the paper, off by default: ``pose_heads = M`` gives the
encoder ``M`` winner-take-all rotation hypotheses (CryoSPIN's multi-choice encoder; with the true volume
fixed it takes full-SO(3) pose learning from lost to mostly found, ``tests/inference/test_pose_encoder.py``;
jointly with the volume only together with the symmetrized loss, benchmarks/RESULTS.md), at ``M``
gradient-free decoder passes per image more; ``loss_resolution`` (Å, 0 = Nyquist) restricts the
image error to frequencies below that resolution (the lattice's radius), as cryoSPARC's ab initio and
cryoDRGN2 do, and the map written is low-passed inside it; ``loss_resolution_final`` (Å, 0 = none) marches
that band: it stays at ``loss_resolution`` for the first ``march_start`` epochs, then its radius (in
frequency) grows linearly, epoch by epoch, to ``loss_resolution_final`` at the last epoch (a fixed schedule,
not driven by a resolution estimate). Every option is a ``--set key=value`` of ``cryolens train cryoai``
(:class:`CryoAIConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..imaging.grids import lowpass_volume
from ..inference.amortized import AmortizedPoseModel
from ..inference.losses import centered_hartley, ctf_on_lattice, image_mse
from ..volumes.lattice import SliceLattice
from ..volumes.neural import NeuralField
from .amortized_pose import AmortizedPoseConfig, fit_amortized
from .config import option


@dataclass(frozen=True)
class CryoAIConfig(AmortizedPoseConfig):
    """Options of cryoai (Levy 2022; the deviations in the module docstring)."""

    batch_size: int = option(64, "images per optimiser step, over all DDP processes")
    dec_layers: int = option(3, "residual blocks of the decoder MLP")
    dec_dim: int = option(256, "width of the decoder MLP")
    pe: Literal["gaussian", "geometric"] = option("gaussian", "positional encoding of the frequencies")
    pe_dim: int = option(0, "wavenumbers per axis of the encoding (0 = D/2)")
    feat_sigma: float = option(0.5, "scale of the Gaussian features, in units of D/2")
    loss_resolution: float = option(0.0, "resolution limit of the image error, Å (0 = Nyquist)")
    loss_resolution_final: float = option(0.0, "the limit the band marches to by the last epoch, Å (0 = none)")
    march_start: int = option(0, "epochs before the band starts to march")


def band_radius(config: CryoAIConfig, box_size: int, pixel_size: float, epoch: int) -> float:
    """Radius (px of the ``box_size`` lattice, ≤ D/2) of the loss band during 0-based ``epoch`` (module
    docstring: ``loss_resolution``, ``loss_resolution_final``, ``march_start``, ``epochs``)."""
    nyquist = box_size / 2

    def radius(res: float) -> float:
        return min(nyquist, box_size * pixel_size / res) if res > 0 else nyquist

    start, final = radius(float(config.loss_resolution)), float(config.loss_resolution_final)
    if final <= 0:
        return start
    first, last = int(config.march_start), int(config.epochs) - 1
    t = 1.0 if last <= first else min(1.0, max(0.0, (epoch - first) / (last - first)))
    return start + t * (radius(final) - start)


class CryoAI(AmortizedPoseModel):
    """Pose encoder + neural Fourier volume; per-image error: mean squared Hartley residual on the slice
    lattice of the centred (predicted shift), normalised image against the CTF-weighted slice."""

    def __init__(self, box_size: int, pixel_size: float, config: CryoAIConfig):
        super().__init__(box_size, pixel_size, config)
        self.config = config
        # the loss band: frequencies |k| < radius px (band_radius); a buffer, so a resumed run has its band
        self.register_buffer("band", torch.tensor(band_radius(config, box_size, pixel_size, 0), dtype=torch.float64))
        self.lattice = SliceLattice(box_size, radius=float(self.band))
        self._lattice_band = float(self.band)
        self.field = NeuralField(box_size, 0, int(config.dec_layers), int(config.dec_dim), config.pe,
                                 int(config.pe_dim) or None, float(config.feat_sigma), "fourier", seed=int(config.seed))
        self.register_buffer("norm", torch.ones(()))

    def set_norm(self, value: float) -> None:
        # Parseval: an unnormalised D×D centered transform of white pixels of std s has per-pixel std s·D
        self.encoder.set_scale(value)
        self.norm.fill_(float(value) * self.field.box_size)
        self.field.output_scale.fill_(float(self.norm))

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """The engine's hook: the band of this epoch (frequency marching)."""
        self.band.fill_(band_radius(self.config, self.field.box_size, self.pixel_size, epoch))

    def image_errors(self, images, rotations, shifts, ctf) -> torch.Tensor:
        if self._lattice_band != float(self.band):  # a new band (marching, or a resumed state)
            self.lattice = SliceLattice(self.field.box_size, radius=float(self.band))
            self._lattice_band = float(self.band)
        lat = self.lattice
        if lat.pixels.device != images.device:
            lat.to(images.device)
        target = lat.gather(centered_hartley(images, shifts)) / self.norm
        pred = self.field.slices(rotations, None, lat)
        if ctf is not None:
            pred = pred * ctf_on_lattice(ctf, lat, self.pixel_size)
        return image_mse(pred, target)

    def render_map(self) -> torch.Tensor:
        vol = self.field.render()[0]
        d, band = self.field.box_size, float(self.band)
        if band < d / 2:  # the field was never trained beyond the loss band: a low-pass whose edge ends there
            edge = min(2.0, band / 2)
            vol = lowpass_volume(vol, d * self.pixel_size / (band - edge), self.pixel_size, width_shells=edge)
        return vol


def fit(particles, known, run, config: CryoAIConfig, device=None, progress=True):
    """Registry entry point of ``cryoai`` (poses unknown, CTF known)."""
    torch.manual_seed(config.seed)
    model = CryoAI(particles.box_size, particles.pixel_size, config)
    return fit_amortized(model, particles, run, config, device, progress, "cryoai")

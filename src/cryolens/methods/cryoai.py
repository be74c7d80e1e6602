"""cryoAI (Levy, Poitevin, Martel, Nashed, Peck, Miolane, Ratner, Dunne, Wetzstein 2022, ECCV; authors'
code compSPI/cryoAI): ab initio homogeneous reconstruction with amortized pose inference.

Composition: :class:`~cryolens.inference.pose_encoder.PoseEncoder` (CNN → S2S2 rotation + bounded shift)
× :class:`~cryolens.volumes.neural.NeuralField` (implicit Fourier volume, homogeneous) × the Hartley-lattice
image error with the CTF (:mod:`~cryolens.inference.losses`: ``centered_hartley`` with the predicted shift,
``ctf_on_lattice``, ``image_mse``), symmetrized (``symmetrized_loss``, review §3.3.1), on the one engine
(:mod:`~cryolens.methods.amortized_pose` holds the wiring, poses, refinement and outputs).

Published values (METHODS.md; Levy 2022): Adam, lr 1e-4, batch 64, 100 epochs, symmetrized loss on,
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
cryoDRGN2 do, and the map written is low-passed there. Every option is a ``--set key=value`` of
``cryolens train cryoai``.
"""

from __future__ import annotations

import torch

from ..imaging.grids import lowpass_volume
from ..inference.losses import centered_hartley, ctf_on_lattice, image_mse
from ..volumes.lattice import SliceLattice
from ..volumes.neural import NeuralField
from .amortized_pose import COMMON_DEFAULTS, AmortizedPoseModel, fit_amortized

DEFAULTS = {
    **COMMON_DEFAULTS,
    "dec_layers": 3, "dec_dim": 256, "pe": "gaussian", "pe_dim": 0, "feat_sigma": 0.5,
    "epochs": 20, "batch_size": 64, "lr": 1e-4, "loss_resolution": 0.0,
}


class CryoAI(AmortizedPoseModel):
    """Pose encoder + neural Fourier volume; per-image error: mean squared Hartley residual on the slice
    lattice of the centred (predicted shift), normalised image against the CTF-weighted slice."""

    def __init__(self, box_size: int, pixel_size: float, config: dict):
        super().__init__(box_size, pixel_size, config)
        # the loss band: frequencies |k| < D·apix/res px (loss_resolution Å; 0 = up to Nyquist)
        res = float(config["loss_resolution"])
        self.band_resolution = res if res > 2 * pixel_size else 0.0
        self.lattice = SliceLattice(box_size, radius=box_size * pixel_size / res if self.band_resolution else None)
        self.field = NeuralField(box_size, 0, int(config["dec_layers"]), int(config["dec_dim"]), config["pe"],
                                 int(config["pe_dim"]) or None, float(config["feat_sigma"]), "fourier",
                                 seed=int(config["seed"]))
        self.register_buffer("norm", torch.ones(()))

    def set_norm(self, value: float) -> None:
        # Parseval: an unnormalised D×D centered transform of white pixels of std s has per-pixel std s·D
        self.encoder.set_scale(value)
        self.norm.fill_(float(value) * self.field.box_size)
        self.field.output_scale.fill_(float(self.norm))

    def image_errors(self, images, rotations, shifts, ctf) -> torch.Tensor:
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
        if self.band_resolution:  # the field was never trained beyond the loss band: keep the band only
            vol = lowpass_volume(vol, self.band_resolution, self.pixel_size)
        return vol


def fit(particles, known, run, config, device=None, progress=True):
    """Registry entry point of ``cryoai`` (poses unknown, CTF known)."""
    torch.manual_seed(int(config["seed"]))
    model = CryoAI(particles.box_size, particles.pixel_size, config)
    return fit_amortized(model, particles, run, config, device, progress, "cryoai", "cryoAI (amortized poses)")

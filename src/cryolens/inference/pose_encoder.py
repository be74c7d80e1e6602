"""Amortized pose inference: a CNN that maps one particle image to its pose ``(R, t)``.

cryoAI (Levy et al. 2022) and CryoPoseNet (Nashed et al. 2021) replace the per-image pose search by an
encoder ``E(Y) = (R, t)`` trained jointly with the volume, so its cost does not grow with the dataset
(no per-image pose table). :class:`PoseEncoder`:

1. optional low-pass of the image (a soft disc of radius ``lowpass`` cycles/px in the centered Fourier
   layout; 0 = none), then division by the data scale (``set_scale``: the images' std);
2. a VGG-like trunk: blocks of ``convs`` × (3×3 conv, batch norm, ReLU) followed by a 2×2 max-pool,
   channels ``channels · 2^b`` (capped at ``max_channels``), until the map is ``4 × 4`` or smaller
   (cryoAI: VGG16 trained from scratch with batch norm);
3. a rotation head (fully connected ``hidden`` → 6) read as the continuous S2S2 / 6D representation and
   turned into a proper rotation by Gram–Schmidt (:func:`~cryolens.imaging.rotations.s2s2_to_matrix`);
   with ``heads = M > 1`` it gives ``M`` rotation hypotheses (``hidden`` → 6M) of which the caller keeps the
   one whose image error is smallest (winner-take-all, as CryoSPIN's multi-choice encoder, Shekarforoush
   et al. 2024: one head regressing a pose over all of SO(3) falls into flipped-view minima);
4. a separate translation head (fully connected ``hidden`` → 2), bounded as ``max_shift · tanh``
   (px, particle centre relative to the image centre, docs/CONVENTIONS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..imaging.fft import fft2_centered, ifft2_centered
from ..imaging.grids import lowpass_filter_2d
from ..imaging.rotations import s2s2_to_matrix


def _head(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class PoseEncoder(nn.Module):
    """``images (B, D, D)`` float32 real space ``[n, y, x]`` → ``(rotations (B, 3, 3), shifts (B, 2))``.

    rotations: image → volume frame (docs/CONVENTIONS.md). shifts: px ``(x, y)``, ``|t| < max_shift`` per axis
    (``max_shift = 0``: no translation head, shifts are zero). box_size: ``D``. channels: first block's
    width; max_channels: the cap; convs: convolutions per block; hidden: widths of both heads
    (cryoAI: ``(512, 256)``); lowpass: cut-off in cycles/px applied to the input (0 = none); heads: rotation
    hypotheses per image (:meth:`hypotheses`; ``forward`` needs ``heads = 1``)."""

    def __init__(self, box_size: int, channels: int = 16, max_channels: int = 128, convs: int = 2,
                 hidden: tuple[int, ...] = (512, 256), max_shift: float = 0.0, lowpass: float = 0.0,
                 heads: int = 1):
        super().__init__()
        if int(heads) < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.heads = int(heads)
        d = int(box_size)
        self.max_shift = float(max_shift)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("filter", lowpass_filter_2d(d, float(lowpass)) if lowpass > 0 else torch.ones(0),
                             persistent=False)
        blocks: list[nn.Module] = []
        c_in, c = 1, int(channels)
        while d > 4:
            for _ in range(int(convs)):
                blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            blocks.append(nn.MaxPool2d(2))
            d //= 2
            c = min(2 * c, int(max_channels))
        self.trunk = nn.Sequential(*blocks, nn.Flatten())
        n_feat = c_in * d * d
        self.rotation_head = _head(n_feat, tuple(hidden), 6 * self.heads)
        self.shift_head = _head(n_feat, tuple(hidden), 2) if self.max_shift > 0 else None

    def set_scale(self, value: float) -> None:
        """Images are divided by ``value`` (e.g. their std) before the trunk."""
        self.scale.fill_(float(value))

    def hypotheses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rotations (B, M, 3, 3), shifts (B, 2))``: the ``M = heads`` rotation hypotheses of each image
        and its one shift."""
        return self.from_features(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's features ``(B, F)`` of ``images (B, D, D)`` (low-passed and scaled first)."""
        x = images.float()
        if self.filter.numel():
            x = ifft2_centered(fft2_centered(x) * self.filter).real
        return self.trunk((x / self.scale)[:, None])

    def from_features(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`hypotheses` from the trunk's features ``(B, F)``."""
        rot = s2s2_to_matrix(self.rotation_head(feat).float().reshape(-1, self.heads, 6))
        if self.shift_head is None:
            return rot, feat.new_zeros(feat.shape[0], 2)
        return rot, self.max_shift * torch.tanh(self.shift_head(feat).float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.heads != 1:
            raise ValueError(f"this encoder has {self.heads} rotation heads: use hypotheses()")
        rot, shift = self.hypotheses(images)
        return rot[:, 0], shift

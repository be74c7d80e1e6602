"""The image formation model: ``X̃ = CTF ⊙ shift(slice_R(Ṽ)) + N`` (review Eq. 9) and its
real-space twin ``X = PSF * shift(Π_2D(R·V)) + ε`` (Eq. 1).

Both paths return the same images up to interpolation error: the Fourier path slices an
oversampled transform; the real path rotates and sums the volume, then applies shift and
CTF in Fourier space (the PSF convolution). Noise is added by the caller
(:mod:`cryolens.imaging.noise`) so the noiseless images stay available.

:class:`ForwardModel` is the interface (docs/ARCHITECTURE.md, "Interfaces"): ``(volume, rotations, shifts,
ctf, pixel_size) → predicted images``, batched and differentiable, in Fourier space (centered complex
transforms) or real space, as its ``space`` says. Implementations: :class:`FourierSliceForward` (the
oversampled Fourier slice, :func:`forward_fourier`), :class:`ImageForward` (real images,
:func:`render_images` with either projector) and :class:`ProjectorForward` (a volume model that projects
itself in real space, e.g. a real-space voxel grid or a Gaussian mixture, then shift and CTF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

from .ctf import CTFParams, ctf_2d
from .fft import fft2_centered, ifft2_centered
from .project import project_real
from .shift import phase_shift
from .half_volume import extract_from_half_sampling_volume, half_sampling_volume
from .slice import extract_slices, prepare_volume_ft


def forward_fourier(volume_ft: torch.Tensor, rotations: torch.Tensor, size: int,
                    shifts: torch.Tensor | None = None, ctf: CTFParams | None = None,
                    pixel_size: float | None = None, hermitian: bool = True) -> torch.Tensor:
    """Predicted image transforms ``(N, D, D)`` complex, centered layout.

    volume_ft: ``(Dp, Dp, Dp)`` from :func:`~cryolens.imaging.slice.prepare_volume_ft`.
    rotations: ``(N, 3, 3)`` image → volume frame. shifts: ``(N, 2)`` px ``(x, y)``.
    ctf: per-image parameters (needs ``pixel_size`` in Å/px).
    hermitian: ``volume_ft`` is the transform of a real volume (the default; halves the work).
    """
    f = extract_slices(volume_ft, rotations, size, hermitian=hermitian and volume_ft.is_complex())
    return shift_and_ctf(f, shifts, ctf, pixel_size)


def shift_and_ctf(projections_ft: torch.Tensor, shifts: torch.Tensor | None = None, ctf: CTFParams | None = None,
                  pixel_size: float | None = None) -> torch.Tensor:
    """Apply the shift phase ramps and the CTF to centered projection transforms ``(N, D, D)``."""
    f = projections_ft
    if shifts is not None:
        f = phase_shift(f, shifts)
    if ctf is not None:
        if pixel_size is None:
            raise ValueError("pixel_size is needed to apply a CTF")
        f = f * ctf_2d(ctf, f.shape[-1], pixel_size, device=f.device, dtype=f.real.dtype)
    return f


def render_images(volume: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
                  ctf: CTFParams | None = None, pixel_size: float | None = None,
                  projector: Literal["fourier", "real"] = "fourier", pad: int = 2,
                  volume_ft: torch.Tensor | None = None) -> torch.Tensor:
    """Noiseless real-space images ``(N, D, D)`` float of a real ``(D, D, D)`` volume.

    projector: ``"fourier"`` (oversampled slice, ``pad``, through the half transform of
    :mod:`cryolens.imaging.half_volume`; pass a precomputed ``volume_ft`` to reuse it across batches)
    or ``"real"`` (rotate + sum). Shifts and CTF as in :func:`forward_fourier`.
    """
    d = volume.shape[-1]
    if projector == "fourier" and volume_ft is None and pad * d % 2 == 0:  # only the kx ≥ 0 half is computed
        f = shift_and_ctf(extract_from_half_sampling_volume(half_sampling_volume(volume, pad), rotations, d),
                          shifts, ctf, pixel_size)
    elif projector == "fourier":
        vft = prepare_volume_ft(volume, pad=pad) if volume_ft is None else volume_ft
        f = forward_fourier(vft, rotations, d, shifts, ctf, pixel_size)
    elif projector == "real":
        return apply_psf(project_real(volume, rotations), shifts, ctf, pixel_size)
    else:
        raise ValueError(f"unknown projector {projector!r}")
    return ifft2_centered(f).real


def apply_psf(projections: torch.Tensor, shifts: torch.Tensor | None = None, ctf: CTFParams | None = None,
              pixel_size: float | None = None) -> torch.Tensor:
    """Real-space images ``(N, D, D)`` from real-space projections ``(N, D, D)``: the shift and the CTF
    applied in Fourier space (:func:`shift_and_ctf`; the PSF convolution of Eq. 1)."""
    return ifft2_centered(shift_and_ctf(fft2_centered(projections), shifts, ctf, pixel_size)).real


@runtime_checkable
class ForwardModel(Protocol):
    """``(volume, rotations (N, 3, 3) image → volume frame, shifts (N, 2) px (x, y) | None, ctf (N) |
    None, pixel_size Å/px) → (N, D, D)`` predicted images (module docstring). ``space``: ``"fourier"``
    (complex centered transforms) or ``"real"`` (float images ``[n, y, x]``)."""

    space: ClassVar[str]

    def __call__(self, volume: Any, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
                 ctf: CTFParams | None = None, pixel_size: float | None = None) -> torch.Tensor:
        ...


@dataclass(frozen=True)
class FourierSliceForward:
    """Centered image transforms ``(N, D, D)`` complex of a real ``(D, D, D)`` map: its ``pad``-times
    oversampled transform sliced (:func:`forward_fourier`)."""

    pad: int = 2
    space: ClassVar[str] = "fourier"

    def __call__(self, volume: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
                 ctf: CTFParams | None = None, pixel_size: float | None = None) -> torch.Tensor:
        vft = prepare_volume_ft(volume, pad=self.pad)
        return forward_fourier(vft, rotations, volume.shape[-1], shifts, ctf, pixel_size)


@dataclass(frozen=True)
class ImageForward:
    """Real-space images ``(N, D, D)`` of a real ``(D, D, D)`` map (:func:`render_images` with
    ``projector`` and ``pad``)."""

    projector: Literal["fourier", "real"] = "fourier"
    pad: int = 2
    space: ClassVar[str] = "real"

    def __call__(self, volume: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
                 ctf: CTFParams | None = None, pixel_size: float | None = None) -> torch.Tensor:
        return render_images(volume, rotations, shifts, ctf, pixel_size, projector=self.projector, pad=self.pad)


@dataclass(frozen=True)
class ProjectorForward:
    """Real-space images ``(N, D, D)`` of a volume model with its own real-space ``project(rotations)``
    (:class:`~cryolens.volumes.protocol.RealSpaceProjector`), then :func:`apply_psf`."""

    space: ClassVar[str] = "real"

    def __call__(self, volume: Any, rotations: torch.Tensor, shifts: torch.Tensor | None = None,
                 ctf: CTFParams | None = None, pixel_size: float | None = None) -> torch.Tensor:
        return apply_psf(volume.project(rotations), shifts, ctf, pixel_size)

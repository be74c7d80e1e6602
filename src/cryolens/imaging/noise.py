"""Noise at a target signal-to-noise ratio.

SNR = variance of the noiseless (CTF-modulated) images / noise variance (docs/CONVENTIONS.md). White
noise is i.i.d. Gaussian per pixel; coloured noise has a per-shell power spectrum shape and is
scaled to the same real-space variance.
"""

from __future__ import annotations

import math

import torch

from .fft import fft2_centered, ifft2_centered
from .grids import coord_grid_2d, shell_index_2d


def noise_sigma_for_snr(signal_variance: float, snr: float) -> float:
    """Noise standard deviation giving ``snr = signal_variance / σ²``."""
    if snr <= 0:
        raise ValueError(f"SNR must be positive, got {snr}")
    return math.sqrt(signal_variance / snr)


def white_noise(shape: tuple[int, ...], sigma: float, generator: torch.Generator | None = None,
                device=None, dtype=torch.float32) -> torch.Tensor:
    """i.i.d. Gaussian noise of standard deviation ``sigma``."""
    return torch.randn(shape, generator=generator, dtype=dtype).to(device) * sigma


def colored_noise(n: int, size: int, sigma: float, spectrum: torch.Tensor,
                  generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n, D, D)`` Gaussian noise with per-shell power ``∝ spectrum (D//2+1,)`` (shell k =
    ``round(|f|·D)``; corner frequencies beyond D//2 use the last value) and real-space
    standard deviation ``sigma``."""
    shells = shell_index_2d(size).clamp_max(size // 2)
    amp = spectrum.to(torch.float64).clamp_min(0).sqrt()[shells]  # (D, D)
    white = torch.randn((n, size, size), generator=generator, dtype=torch.float64)
    col = ifft2_centered(fft2_centered(white) * amp).real
    # Parseval: the per-pixel variance of the coloured field is mean(amp²) · 1
    col = col * (sigma / amp.pow(2).mean().sqrt())
    return col.to(device=device, dtype=dtype)


def add_noise_at_snr(images: torch.Tensor, snr: float, generator: torch.Generator | None = None,
                     signal_variance: float | None = None,
                     spectrum: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Add Gaussian noise to ``images (N, D, D)`` at ``snr``: white, or coloured with the per-shell
    power shape ``spectrum (D//2+1,)``. The signal variance is measured on these images unless
    given (give the dataset's when simulating in chunks). Returns ``(noisy images, σ)`` where σ
    is the noise's real-space standard deviation."""
    var = float(images.var()) if signal_variance is None else signal_variance
    sigma = noise_sigma_for_snr(var, snr)
    if spectrum is None:
        noise = white_noise(tuple(images.shape), sigma, generator, images.device, images.dtype)
    else:
        noise = colored_noise(images.shape[0], images.shape[-1], sigma, spectrum, generator, images.device,
                              images.dtype)
    return images + noise, sigma


def background_sigma(images: torch.Tensor, radius: float) -> float:
    """Real-space noise standard deviation estimated from the background of ``images (N, D, D)``: the std of
    every pixel farther than ``radius`` px from the image centre ``D//2`` (where a centred particle of that
    radius puts no density; its CTF fringes that reach out there are counted as noise)."""
    d = images.shape[-1]
    r = coord_grid_2d(d, images.device, torch.float64).norm(dim=-1)
    outside = images[:, r > radius].double()
    if outside.numel() < 2:
        raise ValueError(f"no background pixels beyond a radius of {radius} px in a {d} px box")
    return float(outside.std())

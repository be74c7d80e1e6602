"""Homogeneous reconstruction from known poses and CTFs: weighted Fourier insertion with a
per-shell Wiener / MAP filter, gold-standard half-maps and their FSC.

For each image ``X_i`` (centered transform ``X̃_i``, shift ``s_i``, CTF ``c_i``, rotation
``R_i``) the shift is undone, and ``c_i · X̃_i`` and ``c_i²`` are inserted along the central
slice ``R_i`` into an oversampled (``pad``) Fourier grid. Each half-set ``h`` gives
``Ṽ_h = Σ c X̃ / (Σ c² + λ_h(k))`` with ``λ(k) = W(k) (1 − FSC(k)) / FSC(k)``: the shell-mean
weight ``W(k)`` times the noise-to-signal ratio implied by the half-map FSC (the MAP
estimate with a per-shell Gaussian prior whose power is read off the FSC, as RELION does).
The full map uses ``FSC_full = 2 FSC / (1 + FSC)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered
from ..imaging.grids import shell_index_3d, spherical_mask
from ..imaging.shift import phase_shift
from ..imaging.slice import finish_staging, scatter_slices, staging_grid, volume_from_ft
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from ..metrics.fsc import fsc, resolution_at


@dataclass
class BackprojectionResult:
    """Maps ``(D, D, D)`` float32 ``[z, y, x]``, half-map FSC ``(D//2+1,)`` and its 0.143 resolution (Å)."""

    volume: torch.Tensor
    half1: torch.Tensor
    half2: torch.Tensor
    fsc: np.ndarray
    resolution: float
    pixel_size: float
    n_images: tuple[int, int]
    info: dict = field(default_factory=dict)


def half_set_labels(particles: Particles, seed: int = 0) -> np.ndarray:
    """``(N,)`` half-set label 0/1: ``rlnRandomSubset`` (1/2) when the metadata has it, else a
    seeded random split of equal halves."""
    subset = particles.extra.get("rlnRandomSubset") if particles.extra else None
    if subset is not None:
        return (np.asarray(subset).astype(int) - 1).clip(0, 1)
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(particles), dtype=int)
    labels[rng.permutation(len(particles))[len(particles) // 2:]] = 1
    return labels


class FourierAccumulator:
    """Running sums ``Σ c X̃`` and ``Σ c²`` of one half-set, kept in a staging grid (half slices,
    see :func:`~cryolens.imaging.slice.scatter_slices`) and completed once when read."""

    def __init__(self, size: int, pad: int, device, dtype=torch.float32):
        self.size, self.padded = size, pad * size
        self.staging = staging_grid(self.padded, 3, device, dtype)
        self.count = 0
        self._done: tuple[torch.Tensor, torch.Tensor] | None = None
        self._shell_cache: torch.Tensor | None = None

    def add(self, images_ft: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor | None,
            scale: torch.Tensor | None = None) -> None:
        """Insert transforms ``(B, D, D)`` complex of real images (shifts already undone) along
        ``rotations``, weighted by their CTFs ``(B, D, D)`` (or none) and optional per-image
        ``scale (B,)`` (e.g. posterior weights)."""
        c = torch.ones_like(images_ft.real) if ctf is None else ctf
        if scale is not None:
            s = scale.to(c.dtype)[:, None, None]
            scatter_slices(self.staging, images_ft * c * s, rotations, self.padded, c * c * s, hermitian=True)
        else:
            scatter_slices(self.staging, images_ft * c, rotations, self.padded, c * c, hermitian=True)
        self.count += images_ft.shape[0]
        self._done = None

    @property
    def data(self) -> torch.Tensor:
        return self._finished()[0]

    @property
    def weight(self) -> torch.Tensor:
        return self._finished()[1]

    def _finished(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._done is None:
            self._done = finish_staging(self.staging, self.padded, is_complex=True, hermitian=True)
        return self._done

    def merged(self, other: FourierAccumulator) -> FourierAccumulator:
        out = FourierAccumulator.__new__(FourierAccumulator)
        out.size, out.padded = self.size, self.padded
        out.staging, out.count, out._done = self.staging + other.staging, self.count + other.count, None
        out._shell_cache = getattr(self, "_shell_cache", None)
        return out

    def _shells(self) -> torch.Tensor:
        """``(Dp, Dp, Dp)`` output shell of each padded-grid voxel, ``round(|k|·Dp / pad)`` (cached)."""
        if getattr(self, "_shell_cache", None) is None:
            pad = self.padded // self.size
            grid = shell_index_3d(self.padded, device=self.staging.device).double()
            self._shell_cache = torch.round(grid / pad).long()
        return self._shell_cache

    def reconstruct(self, reg_per_shell: torch.Tensor) -> torch.Tensor:
        """Real ``(D, D, D)`` map of ``data / (weight + λ(k))`` for ``λ: (D//2+1,)`` per output shell,
        with the box corners beyond radius ``D/2`` faded out over 3 voxels (as RELION's reconstruction
        does: the gridding correction amplifies noise there)."""
        shells = self._shells()
        nyq = self.size // 2
        lam = reg_per_shell.to(self.weight.device, self.weight.dtype)[shells.clamp_max(nyq)]
        vft = self.data / (self.weight + lam)
        vft = torch.where(shells <= nyq, vft, torch.zeros_like(vft))
        vol = volume_from_ft(vft, self.size)
        return vol * spherical_mask(self.size, radius=self.size / 2, width=3.0, device=vol.device).to(vol.dtype)

    def shell_weight(self) -> torch.Tensor:
        """Mean of ``Σ c²`` over each output shell ``(D//2+1,)`` (grid voxels inside Nyquist)."""
        shells = self._shells().reshape(-1)
        n = self.size // 2 + 1
        keep = shells < n
        s = torch.zeros(n, dtype=torch.float64, device=shells.device)
        c = torch.zeros(n, dtype=torch.float64, device=shells.device)
        s.index_add_(0, shells[keep], self.weight.reshape(-1)[keep].double())
        c.index_add_(0, shells[keep], torch.ones(int(keep.sum()), dtype=torch.float64, device=shells.device))
        return s / c.clamp_min(1)


def wiener_regularisation(shell_weight: torch.Tensor, fsc_curve: np.ndarray, floor: float = 1e-3) -> torch.Tensor:
    """``λ(k) = W(k) (1 − FSC) / FSC`` with FSC clipped to ``[floor, 1 − floor]`` (per shell)."""
    f = torch.as_tensor(np.clip(fsc_curve, floor, 1 - floor), dtype=torch.float64, device=shell_weight.device)
    return shell_weight * (1 - f) / f


def accumulate(particles: Particles, pad: int = 2, batch_size: int = 256, device=None, seed: int = 0,
               progress: bool = True) -> tuple[FourierAccumulator, FourierAccumulator]:
    """Stream every image once and fill the two half-set accumulators."""
    if particles.rotations is None:
        raise InputError(f"{particles.source or 'particles'}: no poses (e.g. rlnAngleRot/Tilt/Psi); "
                         "back-projection needs known poses")
    device = torch.device(device or "cpu")
    d = particles.box_size
    labels = torch.as_tensor(half_set_labels(particles, seed))
    halves = (FourierAccumulator(d, pad, device), FourierAccumulator(d, pad, device))
    bar = tqdm(total=len(particles), desc="back-projecting", unit="img", disable=not progress)
    for idx, images in iterate_batches(particles, batch_size):
        idx_t = torch.as_tensor(idx)
        f = fft2_centered(images.to(device))
        if particles.shifts is not None:
            f = phase_shift(f, -particles.shifts[idx_t].to(device))  # move the particle to the centre
        rots = particles.rotations[idx_t].to(device)
        ctf = None
        if particles.ctf is not None:
            ctf = ctf_2d(particles.ctf[idx_t].to(device), d, particles.pixel_size, device=device)
        lab = labels[idx_t].to(device)
        for h in (0, 1):
            m = lab == h
            if bool(m.any()):
                halves[h].add(f[m], rots[m], None if ctf is None else ctf[m])
        bar.update(len(idx))
    bar.close()
    return halves


def backproject(particles: Particles, pad: int = 2, batch_size: int = 256, device=None, seed: int = 0,
                progress: bool = True) -> BackprojectionResult:
    """Reconstruct half-maps and the full map from ``particles`` with known poses and CTFs.

    Returns maps ``(D, D, D)`` float32 on CPU, the half-map FSC and its 0.143 resolution (Å).
    """
    h1, h2 = accumulate(particles, pad, batch_size, device, seed, progress)
    nshell = particles.box_size // 2 + 1
    # pass 1: weak regularisation, just to measure the half-map FSC
    w1, w2 = h1.shell_weight(), h2.shell_weight()
    eps = 1e-3 * torch.ones(nshell, dtype=torch.float64, device=w1.device)
    v1, v2 = h1.reconstruct(eps * w1.mean()), h2.reconstruct(eps * w2.mean())
    curve = fsc(v1, v2)
    # pass 2: MAP / Wiener filter from that FSC (two rounds: the filtered maps' FSC is a better estimate)
    for _ in range(2):
        v1 = h1.reconstruct(wiener_regularisation(w1, curve))
        v2 = h2.reconstruct(wiener_regularisation(w2, curve))
        curve = fsc(v1, v2)
    full = h1.merged(h2)
    fsc_full = 2 * curve / (1 + np.clip(curve, -0.999, None))
    vol = full.reconstruct(wiener_regularisation(full.shell_weight(), fsc_full))
    res = resolution_at(curve, 0.143, particles.pixel_size, particles.box_size)
    return BackprojectionResult(vol.float().cpu(), v1.float().cpu(), v2.float().cpu(), np.asarray(curve), float(res),
                                particles.pixel_size, (h1.count, h2.count), {"pad": pad})


def write_outputs(result: BackprojectionResult, particles: Particles, run, reference: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> dict:
    """Write maps, metrics and plots of a back-projection into ``run`` (a
    :class:`~cryolens.io.runfolder.RunFolder`); with a ground-truth ``reference`` map, also the
    FSC against it and its 0.5 resolution. Returns the metrics."""
    from ..analysis.plots import plot_fsc, plot_particles, plot_sections
    from ..io.dataset import iterate_batches as _batches
    from ..io.mrc import write_volume

    px, d = particles.pixel_size, particles.box_size
    write_volume(run.path("map.mrc"), result.volume.numpy(), px)
    write_volume(run.path("half1.mrc"), result.half1.numpy(), px)
    write_volume(run.path("half2.mrc"), result.half2.numpy(), px)
    metrics = {"n_images": len(particles), "n_half1": result.n_images[0], "n_half2": result.n_images[1],
               "box_size": d, "pixel_size": px, "resolution_halfmap_0143_A": result.resolution,
               "fsc_halfmaps": result.fsc.tolist()}
    curves = {"half-map FSC": result.fsc}
    sections = {"map": result.volume.numpy()}
    if reference is not None:
        ref = reference.to(result.volume.dtype)
        gt = fsc(result.volume, ref) if mask is None else fsc(result.volume * mask, ref * mask)
        metrics["fsc_vs_ground_truth"] = np.asarray(gt).tolist()
        metrics["resolution_vs_ground_truth_05_A"] = float(resolution_at(np.asarray(gt), 0.5, px, d))
        curves["map vs ground truth"] = np.asarray(gt)
        sections["ground truth"] = ref.numpy()
    plot_fsc(curves, px, d, run.path("fsc.png"))
    plot_sections(sections, run.path("sections.png"))
    # a few particles with their CTFs
    idx, images = next(iter(_batches(particles, 6)))
    ctfs = None
    if particles.ctf is not None:
        ctfs = ctf_2d(particles.ctf[torch.as_tensor(idx)], d, px).numpy()
    plot_particles(images.numpy(), ctfs, run.path("particles.png"), [f"particle {i}" for i in idx])
    run.write_metrics(metrics)
    return metrics

"""A volume made of ``N`` isotropic Gaussians whose centres (and amplitudes) may move with ``z``.

``V(r) = Σ_j a_j exp(−|r − μ_j|² / (2 σ_j²))`` with ``r`` and the centres ``μ_j`` in Å ``(x, y, z)``
relative to the box centre (voxel ``D//2`` on every axis), widths ``σ_j`` in Å and amplitudes ``a_j`` the
peak value of each Gaussian in map units (a mixture built from an atomic model is in the simulator's Å⁻²;
the integral of Gaussian ``j`` is ``a_j (2π)^{3/2} σ_j³`` Å³). A decoder makes it heterogeneous:
``decoder(z (B, L)) → (Δμ (B, N, 3) Å, Δa (B, N) or None)`` is added to the neutral parameters
(E2GMM's and CryoFold's "base model + Δ(z)"); the widths never move with ``z``.

The model answers the volume protocol (:mod:`cryolens.volumes.protocol`) in closed form: ``fourier`` is the
continuous transform of the mixture in cycles/px with the sign and normalisation of the centred DFT
(:func:`~cryolens.imaging.gaussian.mixture_fourier`), which equals the DFT of :meth:`render` for
well-sampled Gaussians (σ ≳ 1.5 px); ``project`` is the exact line integral (voxel steps) of the rotated
mixture (:func:`~cryolens.imaging.gaussian.mixture_projections`), so the real-space forward model needs no
grid; ``project_fourier`` gives the central slices on the image grid directly (the 2D transform of the
projection, separable and so much cheaper than ``fourier`` at the same points). Builders: :func:`from_atoms`
(one Gaussian per atom or per residue, amplitudes from the electron form factors) and :func:`fit_to_map`
(E2GMM's neutral representation of a consensus map).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..imaging.form_factor import default_blur, form_factor_coefficients
from ..imaging.gaussian import mixture_fourier, mixture_projection_ft, mixture_projections, mixture_volumes
from ..imaging.rotations import rigid_fit
from ..io.atomic import Atoms, moved_model, residue_index, select_atoms

_NAMES = ("centers", "amplitudes", "sigmas")


class GaussianMixtureVolume(nn.Module):
    """``N`` Gaussians (module docstring). centers ``(N, 3)`` Å ``(x, y, z)`` from the box centre,
    amplitudes ``(N,)`` peak values, sigmas ``(N,)`` Å; box_size ``D`` (even), pixel_size Å/px. The names
    in ``learn`` are ``nn.Parameter`` s (the neutral model is trained), the others buffers. decoder: maps
    ``z (B, zdim)`` to ``(Δcenters (B, N, 3) Å, Δamplitudes (B, N) | None)``; ``zdim`` 0 = homogeneous.
    The module's dtype is that of ``centers`` (float32 when they are not floating point).

    From :func:`from_atoms`, ``atoms`` (the model), ``atom_gaussian`` (``(M,)`` int, the Gaussian of each atom)
    and ``origin`` (the model-frame point at the box centre) are kept, so :meth:`atomic_models` can move every
    atom with its Gaussian and :meth:`atom_maps` draw the moved atoms. ``frame_gaussians``: the Gaussians that
    :meth:`set_frame` holds still (``None``: the decoder's frame; not saved with the weights)."""

    def __init__(self, centers: torch.Tensor, amplitudes: torch.Tensor, sigmas: torch.Tensor, box_size: int,
                 pixel_size: float, decoder: nn.Module | None = None, zdim: int = 0,
                 learn: tuple[str, ...] = ("centers", "amplitudes")):
        super().__init__()
        d = int(box_size)
        if d <= 0 or d % 2:
            raise ValueError(f"GaussianMixtureVolume: box size {box_size} must be positive and even")
        if not pixel_size > 0:
            raise ValueError(f"GaussianMixtureVolume: pixel size {pixel_size} must be positive")
        if set(learn) - set(_NAMES):
            raise ValueError(f"GaussianMixtureVolume: learn {learn}: names must be among {_NAMES}")
        c = torch.as_tensor(centers)
        dtype = c.dtype if c.is_floating_point() else torch.float32
        values = {"centers": c.reshape(-1, 3), "amplitudes": torch.as_tensor(amplitudes).reshape(-1),
                  "sigmas": torch.as_tensor(sigmas).reshape(-1)}
        n = values["centers"].shape[0]
        for name, v in values.items():
            if v.shape[0] != n:
                raise ValueError(f"GaussianMixtureVolume: {v.shape[0]} {name} for {n} centres")
            v = v.detach().to(device=c.device, dtype=dtype).clone()
            if name in learn:
                setattr(self, name, nn.Parameter(v))
            else:
                self.register_buffer(name, v)
        if not bool((values["sigmas"] > 0).all()):
            raise ValueError("GaussianMixtureVolume: every sigma must be positive")
        self.box_size, self.pixel_size, self.learn = d, float(pixel_size), tuple(learn)
        self.zdim, self.decoder = 0, None
        if decoder is not None or zdim:
            self.attach_decoder(decoder, zdim)
        self.atoms: Atoms | None = None
        self.atom_gaussian: np.ndarray | None = None
        self.origin: np.ndarray | None = None  # the model-frame point (Å) at the box centre
        self.frame_gaussians: torch.Tensor | None = None

    @property
    def n_gaussians(self) -> int:
        """``N``."""
        return int(self.centers.shape[0])

    def attach_decoder(self, decoder: nn.Module, zdim: int) -> GaussianMixtureVolume:
        """Make the mixture heterogeneous: ``decoder(z (B, zdim)) → (Δcenters (B, N, 3) Å, Δamplitudes
        (B, N) | None)``. Returns ``self``."""
        if decoder is None or int(zdim) <= 0:
            raise ValueError("GaussianMixtureVolume: a decoder needs zdim > 0 and a zdim needs a decoder")
        self.decoder, self.zdim = decoder, int(zdim)
        return self

    def params(self, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(centers (B, N, 3) Å, amplitudes (B, N), sigmas (B, N) Å)`` at ``z (B, L)``. ``z = None`` (or a
        homogeneous model): the neutral mixture, ``B = 1`` when ``z`` is None. Widths enter as ``|σ|``."""
        b = 1 if z is None else z.shape[0]
        c, a = self.centers[None], self.amplitudes[None]
        s = self.sigmas.abs()[None].expand(b, -1)
        if z is None or self.decoder is None:
            return c.expand(b, -1, -1), a.expand(b, -1), s
        dc, da = self.decoder(z)
        c = c + dc.to(c.dtype)
        if self.frame_gaussians is not None:
            r, t = self._fit_frame(c)
            c = c @ r.to(c.dtype).transpose(-1, -2) + t.to(c.dtype)[:, None]
        return c, (a + da.to(a.dtype)) if da is not None else a.expand(b, -1), s

    def set_frame(self, gaussians: torch.Tensor | np.ndarray | None) -> GaussianMixtureVolume:
        """Fix the gauge of the decoded motion: from now on :meth:`params` (and so every map, projection and
        model) moves each decoded mixture rigidly so that the centres of ``gaussians`` (indices ``(K,)``, at
        least 3 not on a line) lie at their best fit (Kabsch) to their neutral positions — the motion as seen
        from those Gaussians. ``None``: the decoder's own frame. Images fix a pose only together with the
        conformation, so a decoder trained without poses may turn the whole mixture with ``z`` and the poses
        absorb the turn; :meth:`frame` gives the motion applied, for the poses to follow it
        (:func:`~cryolens.imaging.rotations.moved_poses`). Returns ``self``."""
        if gaussians is None:
            self.frame_gaussians = None
            return self
        idx = torch.as_tensor(np.asarray(gaussians), dtype=torch.long).reshape(-1)
        if idx.numel() < 3 or int(idx.min()) < 0 or int(idx.max()) >= self.n_gaussians:
            raise ValueError(f"set_frame: need at least 3 Gaussian indices in [0, {self.n_gaussians}), "
                             f"got {idx.numel()}")
        held = self.centers[idx].detach().double()
        spread = torch.linalg.svdvals(held - held.mean(0))
        if not float(spread[1]) > 1e-3 * float(spread[0]):
            raise ValueError("set_frame: the Gaussians lie on a line; their frame is not fixed")
        self.frame_gaussians = idx.to(self.centers.device)
        return self

    def gaussians_of(self, selection: str) -> np.ndarray:
        """Sorted indices ``(K,)`` of the Gaussians that hold atoms of ``selection`` of the model the mixture was
        built from (:func:`from_atoms`): ``"A"`` (chain A), ``"A:46-99"`` (its residues 46 to 99), several joined
        by commas (:func:`~cryolens.io.atomic.select_atoms`; :class:`InputError` when nothing matches)."""
        if self.atoms is None or self.atom_gaussian is None:
            raise ValueError("gaussians_of: this mixture was not built from an atomic model")
        return np.unique(np.asarray(self.atom_gaussian)[select_atoms(self.atoms, selection)])

    def _fit_frame(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.frame_gaussians
        return rigid_fit(c[:, idx].double(), self.centers[idx].detach().double())

    @torch.no_grad()
    def frame(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rigid motion ``x ↦ R x + t`` (``R (B, 3, 3)``, ``t (B, 3)`` Å, float64) that :meth:`params`
        applies to the decoder's centres at ``z (B, L)`` (:meth:`set_frame`; the identity without a frame)."""
        b = z.shape[0]
        eye = torch.eye(3, dtype=torch.float64, device=z.device).expand(b, 3, 3)
        if self.frame_gaussians is None or self.decoder is None:
            return eye.clone(), torch.zeros(b, 3, dtype=torch.float64, device=z.device)
        return self._fit_frame(self.centers[None] + self.decoder(z)[0].to(self.centers.dtype))

    def _voxels(self, z: torch.Tensor | None, pixel: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, a, s = self.params(z)
        return c / pixel, s / pixel, a

    def fourier(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Complex transform ``(B, M)`` at ``coords (B, M, 3)`` cycles/px (volume frame; any frequency: the
        closed form has no Nyquist limit) of the map at ``z (B, L)`` (module docstring)."""
        c, s, a = self._voxels(z, self.pixel_size)
        return mixture_fourier(c, s, a, coords.to(c.dtype))

    def hartley(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Hartley values ``Re F − Im F`` ``(B, M)`` at ``coords (B, M, 3)`` cycles/px."""
        f = self.fourier(coords, z)
        return f.real - f.imag

    def forward(self, coords: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.hartley(coords, z)

    def density(self, z: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """Differentiable maps ``(B, D', D', D')`` ``[z, y, x]`` in the module's dtype: point samples of the
        mixture at the voxel centres; ``size`` ``D'`` (default ``D``) samples the same box of ``D·p`` Å with
        pixels of ``p·D/D'`` Å."""
        size = int(size or self.box_size)
        c, s, a = self._voxels(z, self.pixel_size * self.box_size / size)
        return mixture_volumes(c, s, a, size)

    @torch.no_grad()
    def render(self, z: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """Maps ``(B, D', D', D')`` float32 ``[z, y, x]`` at ``z (B, L)`` (:meth:`density`, detached)."""
        return self.density(z, size).float()

    def project(self, rotations: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Exact projections ``(B, D, D)`` ``[n, y, x]`` under ``rotations (B, 3, 3)`` (image → volume
        frame), voxel units summed along the beam, of the maps at ``z (B, L)`` (or the neutral one)."""
        c, s, a = self._voxels(z, self.pixel_size)
        return mixture_projections(c, s, a, rotations, self.box_size)

    def project_fourier(self, rotations: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Centred 2D transforms ``(B, D, D)`` complex of :meth:`project`: the central slices of
        :meth:`fourier` at ``R · [kx, ky, 0]`` on the ``D × D`` grid, computed separably (``O(B·N·D)``
        exponentials, far cheaper than :meth:`fourier` at the same ``D²`` points)."""
        c, s, a = self._voxels(z, self.pixel_size)
        return mixture_projection_ft(c, s, a, rotations, self.box_size)

    @torch.no_grad()
    def atomic_models(self, z: torch.Tensor | None = None) -> list[Atoms]:
        """The atomic model moved to each row of ``z (B, L)``: every atom displaced by its Gaussian's
        displacement from the neutral centre (B-factors and names kept). Needs a mixture made by
        :func:`from_atoms`."""
        if self.atoms is None or self.atom_gaussian is None:
            raise ValueError("atomic_models: this mixture was not built from an atomic model")
        c = self.params(z)[0]
        delta = (c - self.centers[None]).double().cpu().numpy()
        return [moved_model(self.atoms, self.atom_gaussian, d) for d in delta]

    @torch.no_grad()
    def atom_maps(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """Maps ``(B, D, D, D)`` float32 of the atomic model moved to each row of ``z (B, L)``
        (:meth:`atomic_models`), every atom one Gaussian with its own form-factor width (:func:`from_atoms` per
        atom, the simulator's map): the model's full detail, where the mixture itself may hold one blob per
        residue. Needs a mixture made by :func:`from_atoms`."""
        if self.origin is None:
            raise ValueError("atom_maps: this mixture was not built from an atomic model")
        maps = [from_atoms(m, self.box_size, self.pixel_size, per="atom", center=self.origin,
                           device=self.centers.device).render()[0] for m in self.atomic_models(z)]
        return torch.stack(maps)


def _group_gaussians(atoms: Atoms, group: np.ndarray, blur: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre ``(G, 3)`` Å, weight ``(G,)`` (integral, Å) and variance per axis ``(G,)`` Å² of one Gaussian per
    group of atoms: centred on the group's Cα when it has one, else on its weight centroid; moments of the
    atoms' form-factor Gaussians (blurred by ``blur`` Å²) about that centre."""
    a, b = form_factor_coefficients(list(atoms.elements))
    f0 = atoms.occupancies * a.sum(1)  # ∫ ρ of each atom (Å)
    var_atom = (a * (b + blur) / (8 * math.pi ** 2)).sum(1) / a.sum(1)  # exp(−4π²r²/w): σ² = w/8π²
    n = int(group.max()) + 1
    weight = np.bincount(group, f0, n)
    centre = np.stack([np.bincount(group, f0 * atoms.coords[:, i], n) for i in range(3)], 1) / weight[:, None]
    is_ca = (atoms.atom_names == "CA") & (atoms.elements == "C")
    ca_rows = np.flatnonzero(is_ca)
    first = np.unique(group[ca_rows], return_index=True)  # the first Cα of each group (altloc A before B)
    centre[first[0]] = atoms.coords[ca_rows[first[1]]]
    spread = ((atoms.coords - centre[group]) ** 2).sum(1) / 3
    var = np.bincount(group, f0 * (var_atom + spread), n) / weight
    return centre, weight, var


def from_atoms(atoms: Atoms, box_size: int, pixel_size: float, per: str = "residue", sigma: float | None = None,
               center: np.ndarray | None = None, blur: float | None = None, decoder: nn.Module | None = None,
               zdim: int = 0, learn: tuple[str, ...] = ("centers", "amplitudes"),
               device: torch.device | str | None = None) -> GaussianMixtureVolume:
    """One Gaussian per atom (``per="atom"``) or per residue (``"residue"``: chain, number and name, see
    :func:`~cryolens.io.atomic.residue_index`). A residue's Gaussian sits on its Cα (else on the
    form-factor-weighted centroid of its atoms); its integral is the sum of its atoms' ``f(0)`` (occupancy
    weighted, Peng's form factors), so the map is in the simulator's units (Å⁻²); its width matches the
    second moment of its atoms' potentials (form factor + ``blur`` Å², default ``2π²p²`` as the simulator's)
    about the centre, unless ``sigma`` (Å) fixes one width for all. center: the model-frame point (Å) at
    the box centre (default the centre of mass, as the simulator's). Returns the mixture on ``device``,
    with ``atoms`` and ``atom_gaussian`` kept for :meth:`GaussianMixtureVolume.atomic_models`."""
    if per not in ("atom", "residue"):
        raise ValueError(f"from_atoms: per must be 'atom' or 'residue', got {per!r}")
    if len(atoms) == 0:
        raise ValueError("from_atoms: no atoms")
    group = np.arange(len(atoms)) if per == "atom" else residue_index(atoms)
    blur = default_blur(pixel_size) if blur is None else float(blur)
    centre, weight, var = _group_gaussians(atoms, group, blur)
    sig = np.sqrt(var) if sigma is None else np.full(len(weight), float(sigma))
    amp = weight / ((2 * math.pi) ** 1.5 * sig ** 3)
    origin = atoms.center_of_mass() if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    t = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in
         (("c", centre - origin), ("a", amp), ("s", sig))}
    vol = GaussianMixtureVolume(t["c"], t["a"], t["s"], box_size, pixel_size, decoder, zdim, learn)
    vol.atoms, vol.atom_gaussian, vol.origin = atoms, group, origin
    return vol


def _seed_centres(volume: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3)`` voxel positions ``(x, y, z)`` from the centre, drawn without replacement with probability
    proportional to the positive density, jittered inside their voxel."""
    d = volume.shape[-1]
    w = volume.detach().clamp_min(0).reshape(-1).double().cpu()
    if not bool((w > 0).any()):
        raise ValueError("fit_to_map: the map has no positive density")
    k = min(n, int((w > 0).sum()))
    idx = torch.multinomial(w, k, replacement=False, generator=generator)
    if k < n:
        idx = torch.cat([idx, idx[torch.randint(k, (n - k,), generator=generator)]])
    zyx = torch.stack([idx // (d * d), (idx // d) % d, idx % d], 1).flip(1).double()  # (x, y, z)
    return zyx - d // 2 + torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5


_OCCUPIED = 0.1  # a voxel "holds density" above this fraction of the map's maximum


def gaussians_for_map(volume: torch.Tensor, most: int = 2048) -> int:
    """How many Gaussians :func:`fit_to_map` should use for ``volume (D, D, D)``: as many free parameters (five
    per Gaussian: centre, amplitude, width) as the map has voxels above 10 % of its maximum, so the mixture
    can follow the map to the sampling it was given; at least 1, at most ``most`` (about EMAN2's 2,000 of its
    GMM refinement; e2gmm's encoder input grows by 10 values per Gaussian and image). A 198-residue dimer at
    1.5 Å/px: ~1,800."""
    v = volume.detach().float()
    scale = float(v.abs().max())
    occupied = int((v > _OCCUPIED * scale).sum()) if scale > 0 else 0
    return min(int(most), max(1, math.ceil(occupied / 5)))


def fit_to_map(volume: torch.Tensor, pixel_size: float, n_gaussians: int, steps: int = 400, lr: float = 0.05,
               fit_sigmas: bool = True, seed: int = 0, device: torch.device | str | None = None,
               decoder: nn.Module | None = None, zdim: int = 0,
               learn: tuple[str, ...] = ("centers", "amplitudes")) -> GaussianMixtureVolume:
    """E2GMM's neutral representation of a map ``volume (D, D, D)`` ``[z, y, x]`` (``pixel_size`` Å/px):
    ``n_gaussians`` centres seeded on the positive density (seeded draw), widths from the mean spacing,
    amplitudes from the density under each centre scaled by a least-squares factor; then ``steps`` Adam
    steps (learning rate ``lr`` in voxels for centres, relative for log-widths and amplitudes, cosine decay)
    on the mean squared difference between the mixture's map and ``volume``, widths included when
    ``fit_sigmas``. Returns the fitted mixture (float32, on ``device``) with ``decoder``/``zdim``/``learn``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    target = volume.detach().to(dev, torch.float32)
    d = target.shape[-1]
    scale = float(target.abs().max())
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError("fit_to_map: the map is empty or not finite")
    target = target / scale
    gen = torch.Generator().manual_seed(int(seed))
    centres = _seed_centres(target, int(n_gaussians), gen).float().to(dev)
    occupied = float((target > _OCCUPIED).sum())
    log_s = torch.full((n_gaussians,), math.log(max(1.0, 0.6 * (occupied / n_gaussians) ** (1 / 3))), device=dev)
    idx = (centres.round().long() + d // 2).clamp(0, d - 1)
    amps = target[idx[:, 2], idx[:, 1], idx[:, 0]].clamp_min(0.05)
    first = mixture_volumes(centres[None], log_s.exp()[None], amps[None], d)[0]
    amps = amps * float((first * target).sum() / (first * first).sum().clamp_min(1e-12))
    centres, log_s, amps = (t.clone().requires_grad_(True) for t in (centres, log_s, amps))
    opt = torch.optim.Adam([centres, amps] + ([log_s] if fit_sigmas else []), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(steps):
        opt.zero_grad()
        loss = ((mixture_volumes(centres[None], log_s.exp()[None], amps[None], d)[0] - target) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
    return GaussianMixtureVolume(centres.detach() * pixel_size, amps.detach() * scale,
                                 log_s.detach().exp() * pixel_size, d, pixel_size, decoder, zdim, learn)

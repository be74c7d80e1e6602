"""One full-posterior EM iteration of homogeneous refinement over a pose grid (RELION's Refine3D step).

Model (:mod:`cryolens.inference.likelihood`): ``Y_i = C_i · ramp_t(P_R Ṽ) + N``, per-shell noise power
``σ²(k)``, a pose grid of rotations ``R_m`` × shifts ``t_j`` with a uniform prior.

**E-step** (:func:`~cryolens.inference.posterior.pose_posterior`): per image the posterior weights
``w_imj`` of every grid pose, pruned to the significant set (``mass``, ``max_significant``); the
kept weights are renormalised to sum to 1 per image, and weights below ``weight_floor`` × the
image's largest weight are dropped (with ``mass = 1``, a large ``max_significant`` and
``weight_floor = 0`` the E-step is exact).

**M-step for the volume**: every kept (image, pose) pair is one weighted insertion — the shift undone,
``Y' = phase_shift(Y, −t)`` — ``Σ w C Y'`` and ``Σ w C²`` along the central slice ``R`` into a
:class:`~cryolens.inference.reconstruct.FourierAccumulator`, and the new map is
``data / (weight + λ(k))``. Insertion is linear, so per batch the pairs are first summed per
rotation (``S1_m = Σ w C Y'``, ``S2_m = Σ w C²``) and each used rotation is inserted once (tested
equal to pair-by-pair :func:`insert_weighted`); the same sums give the σ² statistics with one slice
per used rotation instead of one per pair. This is RELION's M-step; for the voxel-grid model with trilinear
interpolation it is the exact maximiser of the expected complete-data log-likelihood only in the
nearest-neighbour limit (each slice pixel feeding one voxel), an approximation otherwise.
``λ(k)`` is given per shell (``reg_per_shell``, in the accumulator's units of ``Σ C²`` per voxel),
or ``σ²(k) / τ²(k)`` from a per-shell prior power ``tau2`` of the volume's Fourier components
(MAP, up to RELION's padding-factor corrections, which are not applied), or by default a ridge of
``1e-3`` × the mean accumulated weight. ``m_step="exact"`` instead solves the un-regularised
least-squares M-step exactly (:func:`exact_m_step`, conjugate gradients), for which EM provably never
decreases the log-likelihood at fixed σ² (tested).

**M-step for σ²** (RELION's): ``σ²_new(k)`` = posterior-weighted mean over images, poses and the
pixels of shell ``k`` of ``|Y' − C · P_R|²`` with the *current* (E-step) reference ``P``, as
RELION computes it during the expectation.

**Log-likelihood**: ``Σ_i log Z_i + N · log_normaliser(σ², D, k_max)`` with ``log Z_i`` the grid
log-evidence of image ``i`` (uniform prior, :mod:`~cryolens.inference.posterior`): the marginal
log-likelihood of the data under the current volume and ``σ²``, comparable across iterations (EM
does not decrease it at fixed ``σ²`` when the M-step is exact).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..imaging.ctf import CTFParams
from ..imaging.fft import fft2_centered
from ..imaging.grids import shell_index_2d, shell_sum
from ..imaging.shift import phase_shift
from ..imaging.slice import prepare_volume_ft
from ..io.dataset import iterate_batches
from ..io.particles import Particles
from .reconstruct import FourierAccumulator
from .likelihood import ctf_images, log_normaliser, shell_weights, volume_slicer
from .posterior import pose_posterior


@dataclass
class EMResult:
    """The outcome of one EM iteration over ``N`` images.

    volume: ``(D, D, D)`` new map (``accumulator.reconstruct(regularisation)``), on the compute device.
    accumulator: the filled :class:`FourierAccumulator` (``count`` = number of weighted insertions).
    regularisation: ``(D//2+1,)`` the ``λ(k)`` used. sigma2: ``(D//2+1,)`` the updated noise power.
    log_likelihood: float, ``Σ_i log Z_i + N · log_normaliser`` under the *input* volume and σ².
    log_evidence: ``(N,)`` per-image ``log Z_i`` (without the normaliser).
    map_rotation_index, map_shift_index: ``(N,)`` int64 MAP pose indices into ``rotations`` / ``shifts``.
    map_shift: ``(N, 2)`` px. max_weight: ``(N,)`` posterior probability of the MAP pose.
    n_significant: ``(N,)`` number of poses inserted per image.
    """

    volume: torch.Tensor
    accumulator: FourierAccumulator | None
    regularisation: torch.Tensor
    sigma2: torch.Tensor
    log_likelihood: float
    log_evidence: torch.Tensor
    map_rotation_index: torch.Tensor
    map_shift_index: torch.Tensor
    map_shift: torch.Tensor
    max_weight: torch.Tensor
    n_significant: torch.Tensor


def _batches(data: Particles | torch.Tensor, ctf, batch_size: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor, CTFParams | torch.Tensor | None]]:
    """``(indices (B,), images (B, D, D) real, ctf of the batch)``."""
    if isinstance(data, Particles):
        for idx, images in iterate_batches(data, batch_size):
            idx_t = torch.as_tensor(idx)
            yield idx_t, images, None if data.ctf is None else data.ctf[idx_t]
        return
    n = data.shape[0]
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        c = None
        if ctf is not None:
            c = ctf[idx] if isinstance(ctf, CTFParams) or ctf.dim() == 3 else ctf
        yield idx, data[start:start + batch_size], c


def insert_weighted(accumulator: FourierAccumulator, images_ft: torch.Tensor, ctf: torch.Tensor | None,
                    image_index: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor,
                    weights: torch.Tensor, chunk: int = 4096) -> None:
    """The volume M-step for a batch: insert ``P`` weighted (image, pose) pairs.

    images_ft: ``(B, D, D)`` complex centered transforms (shift *not* undone). ctf: ``(B, D, D)`` real or
    ``None``. image_index: ``(P,)`` int64 into the batch; rotations: ``(P, 3, 3)``; shifts: ``(P, 2)`` px
    (particle centre relative to the image centre); weights: ``(P,)`` posterior weights. Each pair adds
    ``w · C · phase_shift(Y, −t)`` and ``w · C²`` along ``R`` (:meth:`FourierAccumulator.add`).
    """
    for s in range(0, image_index.shape[0], chunk):
        i = image_index[s:s + chunk]
        y = phase_shift(images_ft[i], -shifts[s:s + chunk])
        accumulator.add(y, rotations[s:s + chunk], None if ctf is None else ctf[i], scale=weights[s:s + chunk])


def _insert_aggregates(acc: FourierAccumulator, s1: torch.Tensor, s2: torch.Tensor, rotations: torch.Tensor) -> None:
    """Insert per-rotation sums ``S1 = Σ w C Y'`` (data) and ``S2 = Σ w C²`` (weight) along
    ``rotations``: by linearity the same as inserting every pair (:func:`insert_weighted`), written with
    :meth:`FourierAccumulator.add` as images ``S1/√S2`` with CTF ``√S2`` (0 where ``S2 = 0``)."""
    root = s2.clamp_min(0).sqrt()
    img = torch.where(root > 0, s1 / root.clamp_min(torch.finfo(root.dtype).tiny), torch.zeros_like(s1))
    acc.add(img, rotations, root)


def exact_m_step(volume: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, rotations: torch.Tensor,
                 pixel_weight: torch.Tensor, pad: int = 2, iterations: int = 30, tol: float = 1e-8,
                 chunk: int = 512) -> torch.Tensor:
    """The exact volume M-step for the voxel-grid model: minimise over real ``(D, D, D)`` volumes ``V``

        f(V) = Σ_m Σ_f ω_f [S2_m(f) |A_m V(f)|² − 2 Re(conj(S1_m(f)) A_m V(f))]

    (the negative expected complete-data log-likelihood up to a constant), with ``A_m V`` the central
    slice ``R_m`` of ``prepare_volume_ft(V, pad)`` — the same projector the E-step scores with — by
    conjugate gradients started at ``volume`` (gradients by autograd; ``f`` is quadratic, so
    ``H p = ∇f(p) − ∇f(0)``). CG decreases ``f`` at every step, so even a truncated solve is a
    generalised-EM step. s1: ``(M, D, D)`` complex ``Σ w C Y'``; s2: ``(M, D, D)`` ``Σ w C²``; rotations:
    ``(M, 3, 3)``; pixel_weight: ``(D, D)`` ``ω = 1/(2σ²)`` inside ``k_max``, 0 outside. Memory: the
    ``M`` slices and their gradients; for small problems (tests, low resolution)."""
    size = volume.shape[-1]
    s1w, s2w = s1 * pixel_weight, s2 * pixel_weight

    def grad(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        slicer = volume_slicer(prepare_volume_ft(v, pad), size)
        total = v.new_zeros(())
        for a in range(0, rotations.shape[0], chunk):
            p = slicer(rotations[a:a + chunk])
            total = total + (s2w[a:a + chunk] * p.abs().square() - 2 * (s1w[a:a + chunk].conj() * p).real).sum()
        (g,) = torch.autograd.grad(total, v)
        return g.detach()

    with torch.enable_grad():
        g0 = grad(torch.zeros_like(volume))
        x = volume.detach().clone()
        r = -grad(x)
        p = r.clone()
        rr = (r * r).sum()
        rr0 = rr
        for _ in range(iterations):
            if rr <= tol * tol * rr0 or rr == 0:
                break
            hp = grad(p) - g0
            php = (p * hp).sum()
            if php <= 0:
                break
            alpha = rr / php
            x = x + alpha * p
            r = r - alpha * hp
            rr_new = (r * r).sum()
            p = r + (rr_new / rr) * p
            rr = rr_new
    return x


def em_iteration(data: Particles | torch.Tensor, volume: torch.Tensor, sigma2: torch.Tensor,
                 rotations: torch.Tensor, shifts: torch.Tensor, *, ctf: CTFParams | torch.Tensor | None = None,
                 pixel_size: float | None = None, k_max: int | None = None, pad: int = 2, batch_size: int = 64,
                 device=None, mass: float = 0.999, max_significant: int = 1000, weight_floor: float = 1e-6,
                 reg_per_shell: torch.Tensor | None = None, tau2: torch.Tensor | None = None,
                 m_step: str = "insert", cg_iterations: int = 30, pair_chunk: int = 2048,
                 rotation_chunk: int | None = None) -> EMResult:
    """One E-step + M-step (module docstring) over all images.

    data: :class:`Particles` (images read in batches; its CTF and pixel size are used, its poses
    ignored) or real images ``(N, D, D)`` with ``ctf`` (:class:`CTFParams` ``(N,)`` with
    ``pixel_size`` Å/px, or ``(N, D, D)`` / ``(D, D)`` real CTF images, or ``None``).
    volume: ``(D, D, D)`` real current map ``[z, y, x]``; its dtype is the compute dtype.
    sigma2: ``(D//2+1,)`` noise power per Fourier component (likelihood module).
    rotations: ``(M, 3, 3)`` image → volume frame. shifts: ``(T, 2)`` px ``(x, y)``, or ``(N, T, 2)``
    per image. k_max: highest shell of the likelihood (default ``D//2``). pad: oversampling of the
    projector and the accumulator. mass, max_significant, weight_floor: the significant set.
    reg_per_shell / tau2: the regulariser ``λ(k)`` (module docstring; at most one).
    m_step: ``"insert"`` (RELION's weighted back-projection, approximate) or ``"exact"`` (the
    un-regularised least-squares maximiser by :func:`exact_m_step`, ``cg_iterations`` CG steps; keeps
    ``M`` per-rotation sums in memory; ``accumulator`` is then ``None``). pair_chunk: pairs / slices
    processed together. rotation_chunk: E-step chunk.
    """
    if m_step not in ("insert", "exact"):
        raise ValueError(f"m_step must be 'insert' or 'exact', got {m_step!r}")
    exact = m_step == "exact"
    if reg_per_shell is not None and tau2 is not None:
        raise ValueError("give at most one of reg_per_shell and tau2")
    dev = torch.device(device) if device is not None else volume.device
    dt = volume.dtype
    size = volume.shape[-1]
    nsh = size // 2 + 1
    if isinstance(data, Particles):
        pixel_size = data.pixel_size if pixel_size is None else pixel_size
    vol = volume.to(dev)
    s2 = sigma2.to(device=dev, dtype=dt)
    rot = rotations.to(device=dev, dtype=dt)
    sh = shifts.to(device=dev, dtype=dt)
    slicer = volume_slicer(prepare_volume_ft(vol, pad), size)
    acc = None if exact else FourierAccumulator(size, pad, dev, dt)
    if exact:
        cdt = torch.complex128 if dt == torch.float64 else torch.complex64
        s1_all = torch.zeros(rot.shape[0], size, size, dtype=cdt, device=dev)
        s2_all = torch.zeros(rot.shape[0], size, size, dtype=dt, device=dev)
    shells = shell_index_2d(size, device=dev)
    pixels_per_shell = shell_sum(torch.ones(size, size, device=dev, dtype=dt), shells, nsh)
    num = torch.zeros(nsh, device=dev, dtype=torch.float64)
    total_w = torch.zeros((), device=dev, dtype=torch.float64)
    out = {k: [] for k in ("idx", "lz", "r", "t", "ts", "w", "n")}

    for idx, images, c_b in _batches(data, ctf, batch_size):
        b = images.shape[0]
        y = fft2_centered(images.to(device=dev, dtype=dt))
        c = ctf_images(c_b, b, size, pixel_size, dev, dt)
        sh_b = sh[idx.to(dev)] if sh.dim() == 3 else sh
        post = pose_posterior(y, slicer, rot, sh_b, s2, ctf=c, k_max=k_max, mass=mass,
                              max_significant=max_significant, rotation_chunk=rotation_chunk)
        keep = (post.rotation_index >= 0) & (post.weight >= weight_floor * post.weight[:, :1])
        w_all = torch.where(keep, post.weight, torch.zeros_like(post.weight))
        w_all = w_all / w_all.sum(1, keepdim=True)
        bi, ki = keep.nonzero(as_tuple=True)
        r, t, w = post.rotation_index[bi, ki], post.shift_index[bi, ki], w_all[bi, ki]
        pair_shifts = sh_b[bi, t] if sh_b.dim() == 3 else sh_b[t]
        # per-rotation sufficient statistics (linear in the pairs): S1 = Σ w C Y', S2 = Σ w C²
        used, inv = torch.unique(r, return_inverse=True)
        s1 = torch.zeros(used.shape[0], size, size, dtype=y.dtype, device=dev)
        s2w = torch.zeros(used.shape[0], size, size, dtype=dt, device=dev)
        for s in range(0, bi.shape[0], pair_chunk):
            i, ws = bi[s:s + pair_chunk], w[s:s + pair_chunk, None, None]
            yu = phase_shift(y[i], -pair_shifts[s:s + pair_chunk])
            ci = torch.ones_like(yu.real) if c is None else c[i]
            s1.index_add_(0, inv[s:s + pair_chunk], ws * ci * yu)
            s2w.index_add_(0, inv[s:s + pair_chunk], ws * ci * ci)
        if exact:
            s1_all.index_add_(0, used, s1)
            s2_all.index_add_(0, used, s2w)
        else:
            _insert_aggregates(acc, s1, s2w, rot[used])
        # σ² (current reference): Σ w|Y' − C P|² = Σ_b |Y_b|² − 2 Re Σ_m conj(S1_m) P_m + Σ_m S2_m |P_m|²
        power = (y.abs().square() * w_all.sum(1)[:, None, None]).sum(0)
        for s in range(0, used.shape[0], pair_chunk):
            p = slicer(rot[used[s:s + pair_chunk]])
            power = power + (-2 * (s1[s:s + pair_chunk].conj() * p).real
                             + s2w[s:s + pair_chunk] * p.abs().square()).sum(0)
        num += shell_sum(power, shells, nsh).double()
        total_w += w.sum().double()
        out["idx"].append(idx)
        out["lz"].append(post.log_evidence)
        out["r"].append(post.map_rotation_index)
        out["t"].append(post.map_shift_index)
        out["ts"].append(post.map_pose(rot, sh_b)[1])
        out["w"].append(post.weight[:, 0])
        out["n"].append(keep.sum(1))

    order = torch.argsort(torch.cat(out["idx"]))
    cat = {k: torch.cat(v).to(dev)[order.to(dev)] for k, v in out.items() if k != "idx"}
    n_images = order.shape[0]
    log_lik = float(cat["lz"].double().sum() + n_images * log_normaliser(s2.double(), size, k_max))
    new_sigma2 = (num / (total_w * pixels_per_shell.double()).clamp_min(1e-300)).to(dt)

    if exact:
        used = torch.nonzero(s2_all.flatten(1).sum(1) > 0).reshape(-1)
        pw = shell_weights(s2, size, k_max)
        new_volume = exact_m_step(vol, s1_all[used], s2_all[used], rot[used], pw, pad, cg_iterations)
        lam = torch.zeros(nsh, device=dev, dtype=torch.float64)
        return EMResult(volume=new_volume, accumulator=None, regularisation=lam, sigma2=new_sigma2,
                        log_likelihood=log_lik, log_evidence=cat["lz"], map_rotation_index=cat["r"],
                        map_shift_index=cat["t"], map_shift=cat["ts"], max_weight=cat["w"],
                        n_significant=cat["n"])
    if reg_per_shell is not None:
        lam = reg_per_shell.to(device=dev, dtype=torch.float64)
    elif tau2 is not None:
        t2 = tau2.to(device=dev, dtype=torch.float64)
        lam = torch.where(t2 > 0, s2.double() / t2.clamp_min(1e-300), torch.full_like(t2, float("inf")))
    else:
        lam = 1e-3 * acc.shell_weight().mean() * torch.ones(nsh, device=dev, dtype=torch.float64)
    new_volume = acc.reconstruct(lam)
    return EMResult(volume=new_volume, accumulator=acc, regularisation=lam, sigma2=new_sigma2,
                    log_likelihood=log_lik, log_evidence=cat["lz"], map_rotation_index=cat["r"],
                    map_shift_index=cat["t"], map_shift=cat["ts"], max_weight=cat["w"], n_significant=cat["n"])

"""Rotation error between estimated and true poses, after the best global alignment and, for
ab initio results, after also trying the mirror (a map of the wrong hand).

Conventions (docs/CONVENTIONS.md): a rotation ``R`` maps image-frame coordinates into the volume frame,
``image(x, y) = ∫ V(R · [x, y, z]ᵀ) dz``.

**Which side the global rotation acts on.** A reconstruction is only defined up to a rotation of
its frame: if the estimated map is ``V_est(u) = V_true(G u)`` (``G`` a rotation), then
``∫ V_est(R_est p) dz = ∫ V_true(G R_est p) dz``, so the estimated poses that explain the same
images satisfy ``G · R_est = R_true``: the global rotation multiplies on the **left**. Rotating the
estimated map by ``G``, ``V_aligned(x) = V_est(Gᵀ x)``, superimposes it on the truth, and
``G · R_est`` are its poses. (A right factor ``R_est · H`` would instead rotate every image in its
own plane and is not an ambiguity of the data.)

**The mirror.** With ``J = diag(1, 1, −1)``, the mirrored map ``V_m(u) = V(J u)`` (``z → −z``)
projected with ``J R J`` gives exactly the projections of ``V`` with ``R``:
``∫ V_m(J R J p) dz = ∫ V(R J p) dz = ∫ V(R p) dz`` (``J p`` only flips the sign of ``z``, which the
integral over ``z`` does not see). ``J R J`` is a proper rotation (RELION angles
``(rot, tilt, psi) ↦ (rot + 180°, tilt, psi + 180°)``, i.e. ``tilt ↦ −tilt``), so a map of the wrong
hand comes with poses ``G · J R_true J``. Any other reflection (``V(−u)``, a flip of ``x``) differs
from ``J`` by a rotation, which ``G`` absorbs.

**Alignment.** ``G`` minimises ``Σ_i w_i ‖G A_i − R_true,i‖_F`` with ``A_i = R_est,i`` (or
``J R_est,i J``): first the least-squares solution (``w = 1``; ``G = U diag(1, 1, det UVᵀ) Vᵀ`` from
the SVD of ``Σ R_true,i A_iᵀ``), then a few iteratively reweighted steps (``w_i = 1 / ‖G A_i −
R_true,i‖``: the robust L1 fit, so a minority of badly wrong poses do not drag ``G`` away from the
rest). The hand with the smaller median error after alignment wins.

Errors are geodesic angles in degrees, returned as numpy float64; ``G`` is a torch float64 tensor
on the inputs' device.
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.rotations import geodesic_distance

_J = (1.0, 1.0, -1.0)


def mirror_rotations(rotations: torch.Tensor) -> torch.Tensor:
    """``J R J`` with ``J = diag(1, 1, −1)``: the poses that give the same projections of the
    mirrored map ``V(J u)`` as ``R`` gives of ``V``. ``(..., 3, 3)`` → same shape (a new tensor)."""
    j = torch.tensor(_J, dtype=rotations.dtype, device=rotations.device)
    return rotations * j[:, None] * j[None, :]


def _procrustes(m: torch.Tensor) -> torch.Tensor:
    """The rotation ``G`` maximising ``tr(Gᵀ M)`` for a ``(3, 3)`` matrix ``M``."""
    u, _, vh = torch.linalg.svd(m)
    d = torch.ones(3, dtype=m.dtype, device=m.device)
    d[2] = torch.sign(torch.linalg.det(u @ vh))
    if d[2] == 0:
        d[2] = 1.0
    return (u * d) @ vh


def _fit_left(a: torch.Tensor, b: torch.Tensor, iterations: int) -> torch.Tensor:
    """``G`` with ``G a_i ≈ b_i`` for ``(N, 3, 3)`` float64 batches (least squares, then IRLS)."""
    g = _procrustes((b @ a.transpose(-1, -2)).sum(0))
    for _ in range(iterations):
        resid = (g @ a - b).flatten(1).norm(dim=1)
        w = 1.0 / resid.clamp_min(1e-9)
        g = _procrustes((w[:, None, None] * (b @ a.transpose(-1, -2))).sum(0))
    return g


def _check(r_est: torch.Tensor, r_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(r_est)
    b = torch.as_tensor(r_true)
    if a.shape != b.shape or a.dim() != 3 or a.shape[1:] != (3, 3):
        raise ValueError(f"pose error: expected two (N, 3, 3) rotation sets of the same N, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError("pose error: empty rotation sets")
    return a.to(torch.float64), b.to(device=a.device, dtype=torch.float64)


def align_rotations(r_est: torch.Tensor, r_true: torch.Tensor, allow_mirror: bool = True,
                    iterations: int = 10) -> tuple[torch.Tensor, bool]:
    """Best global rotation between two pose sets.

    r_est, r_true: ``(N, 3, 3)`` image frame → volume frame (any float dtype, any device).
    allow_mirror: also try the mirror hand (ab initio maps can come out with the wrong hand).
    iterations: reweighted (robust L1) refinement steps after the least-squares fit; 0 = plain
    least squares.
    Returns ``(G, mirrored)``: ``G`` ``(3, 3)`` float64 on ``r_est``'s device such that
    ``G · R_est ≈ R_true`` — or, when ``mirrored``, ``G · J R_est J ≈ R_true`` with
    ``J = diag(1, 1, −1)`` (see the module docstring). Rotating the estimated map by ``G``
    (``V(Gᵀ x)``; after flipping its z axis when mirrored) superimposes it on the truth.
    """
    a, b = _check(r_est, r_true)
    best: tuple[float, torch.Tensor, bool] | None = None
    for mirrored in ((False, True) if allow_mirror else (False,)):
        src = mirror_rotations(a) if mirrored else a
        g = _fit_left(src, b, iterations)
        med = float(geodesic_distance(g @ src, b).median())
        if best is None or med < best[0]:
            best = (med, g, mirrored)
    assert best is not None
    return best[1], best[2]


def apply_alignment(r_est: torch.Tensor, g: torch.Tensor, mirrored: bool) -> torch.Tensor:
    """Estimated rotations ``(N, 3, 3)`` in the true frame: ``G R`` (or ``G J R J`` when
    ``mirrored``), float64, on ``r_est``'s device."""
    a = torch.as_tensor(r_est).to(torch.float64)
    src = mirror_rotations(a) if mirrored else a
    return g.to(device=a.device, dtype=torch.float64) @ src


def rotate_map(volume: torch.Tensor, g: torch.Tensor, mirrored: bool = False, order: int = 3) -> torch.Tensor:
    """The map in the frame of :func:`align_rotations`'s ``(G, mirrored)``: ``V'(x) = V(Gᵀ x)`` (after
    ``V(x, y, −z)`` when ``mirrored``) about the box centre ``D//2``; ``volume (D, D, D)`` ``[z, y, x]``,
    ``g (3, 3)`` acting on ``(x, y, z)``; zero outside the box.
    ``order``: spline order of ``scipy.ndimage.affine_transform`` (3, cubic: trilinear interpolation
    damps the FSC near Nyquist by several per cent, enough to move a 0.5 crossing by a shell).
    Computed in float64 on the CPU; returned in ``volume``'s dtype and device."""
    from scipy import ndimage

    v = volume.detach().double().cpu().numpy()
    d = v.shape[-1]
    m = g.detach().double().cpu().numpy().T  # source point Gᵀ x
    if mirrored:
        m = np.diag([1.0, 1.0, -1.0]) @ m
    rev = np.eye(3)[::-1]  # (x, y, z) ↔ array axes (z, y, x)
    a = rev @ m @ rev
    c = np.full(3, float(d // 2))
    out = ndimage.affine_transform(v, a, offset=c - a @ c, order=order, mode="constant", cval=0.0)
    return torch.from_numpy(out).to(device=volume.device, dtype=volume.dtype)


def rotation_errors(r_est: torch.Tensor, r_true: torch.Tensor, align: bool = True,
                    allow_mirror: bool = True) -> np.ndarray:
    """Per-image geodesic angle (degrees, ``(N,)`` float64 numpy) between estimated and true
    rotations ``(N, 3, 3)``, after :func:`align_rotations` when ``align`` (else as given, for
    poses already in the true frame)."""
    a, b = _check(r_est, r_true)
    if align:
        g, mirrored = align_rotations(a, b, allow_mirror)
        a = apply_alignment(a, g, mirrored)
    return np.rad2deg(geodesic_distance(a, b).cpu().numpy())


def pose_error_summary(r_est: torch.Tensor, r_true: torch.Tensor, align: bool = True,
                       allow_mirror: bool = True) -> dict:
    """Summary of :func:`rotation_errors`: ``{"median_deg", "mean_deg", "max_deg", "mirrored",
    "alignment" (G as nested lists, identity when not aligned), "n"}`` (plain Python values, JSON-ready)."""
    a, b = _check(r_est, r_true)
    g, mirrored = (align_rotations(a, b, allow_mirror) if align
                   else (torch.eye(3, dtype=torch.float64, device=a.device), False))
    err = np.rad2deg(geodesic_distance(apply_alignment(a, g, mirrored), b).cpu().numpy())
    return {"median_deg": float(np.median(err)), "mean_deg": float(err.mean()), "max_deg": float(err.max()),
            "mirrored": bool(mirrored), "alignment": g.cpu().tolist(), "n": int(err.shape[0])}

"""The contrast transfer function, RELION's formula and parameter names.

``Δf(θ) = ½(U+V) + ½(U−V)·cos 2(θ − angle)`` (Å, positive = underfocus; ``angle`` from +x
towards +y), ``λ = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` Å with ``V`` in volts,
``CTF(k) = sin(π λ Δf k² − ½ π Cs λ³ k⁴ + φ + atan(Q0 / sqrt(1 − Q0²)))`` with Cs in Å and
``k`` in 1/Å, times an optional envelope ``exp(−B k² / 4)``. So ``CTF(0) = +Q0``.
cryoDRGN's ``compute_ctf`` is −1 × this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .grids import freq_grid_2d


def electron_wavelength(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2643247 / torch.sqrt(v * (1 + 0.978466e-6 * v))


@dataclass
class CTFParams:
    """Per-image CTF parameters, each a tensor of shape ``(N,)`` (or broadcastable).

    ``defocus_u`` / ``defocus_v``: Å, positive = underfocus; ``defocus_angle``: radians,
    direction of ``defocus_u`` from +x towards +y; ``voltage``: kV; ``cs``: mm;
    ``amplitude_contrast``: fraction Q0; ``phase_shift``: radians; ``bfactor``: Å².
    """

    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    defocus_angle: torch.Tensor
    voltage: torch.Tensor
    cs: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift: torch.Tensor
    bfactor: torch.Tensor

    @classmethod
    def create(cls, defocus_u, defocus_v=None, defocus_angle=0.0, voltage=300.0, cs=2.7,
               amplitude_contrast=0.1, phase_shift=0.0, bfactor=0.0, device=None,
               dtype=torch.float32) -> CTFParams:
        """Build from scalars or arrays, broadcasting every field to ``defocus_u``'s shape."""
        du = torch.as_tensor(defocus_u, dtype=dtype, device=device).reshape(-1)
        dv = du if defocus_v is None else defocus_v
        vals = [du, dv, defocus_angle, voltage, cs, amplitude_contrast, phase_shift, bfactor]
        n = max(torch.as_tensor(v).numel() for v in vals)
        out = [torch.as_tensor(v, dtype=dtype, device=device).reshape(-1).expand(n).clone() for v in vals]
        return cls(*out)

    def __len__(self) -> int:
        return int(self.defocus_u.shape[0])

    def __getitem__(self, idx) -> CTFParams:
        return CTFParams(*[getattr(self, f.name)[idx] for f in fields(self)])

    def to(self, device=None, dtype=None) -> CTFParams:
        return CTFParams(*[getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)])

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def cat(items: list[CTFParams]) -> CTFParams:
        return CTFParams(*[torch.cat([getattr(c, f.name) for c in items]) for f in fields(CTFParams)])


def ctf_from_freqs(freqs: torch.Tensor, params: CTFParams, per_image: bool = False) -> torch.Tensor:
    """CTF at spatial frequencies ``freqs`` ``(kx, ky)`` in 1/Å.

    Each field of ``params`` has shape ``(N,)``. ``freqs`` is shared ``(*S, 2)``, or per image
    ``(N, *S, 2)`` when ``per_image``. Returns ``(N, *S)`` in ``freqs``' dtype.

    The phase is the module docstring's, with ``k² cos 2(θ − angle)`` written as
    ``(kx² − ky²) cos 2·angle + 2 kx ky sin 2·angle``: a sum of five per-frequency terms times five per-image
    coefficients (one matrix product for shared frequencies), then one ``sin`` per pixel (no ``atan2`` or
    ``cos`` per pixel; the envelope only when a B-factor is not 0).
    """
    dtype = freqs.dtype
    p = {k: v.to(device=freqs.device, dtype=dtype).reshape(-1) for k, v in params.as_dict().items()}
    kx, ky = freqs[..., 0], freqs[..., 1]
    k2 = kx * kx + ky * ky
    terms = torch.stack([k2, kx * kx - ky * ky, 2 * kx * ky, k2 * k2, torch.ones_like(k2)], dim=-1)  # (…, 5)
    lam = electron_wavelength(p["voltage"]).to(dtype)
    q0 = p["amplitude_contrast"]
    # radians: π · Å · Å · Å⁻²  and  π · Å · Å³ · Å⁻⁴ (Cs mm → Å)
    half_astig = math.pi * lam * 0.5 * (p["defocus_u"] - p["defocus_v"])
    coef = torch.stack([math.pi * lam * 0.5 * (p["defocus_u"] + p["defocus_v"]),
                        half_astig * torch.cos(2 * p["defocus_angle"]), half_astig * torch.sin(2 * p["defocus_angle"]),
                        -0.5 * math.pi * (p["cs"] * 1e7) * lam**3,
                        p["phase_shift"] + torch.atan(q0 / torch.sqrt(1 - q0 * q0))], dim=-1)  # (N, 5)
    if per_image:
        gamma = (terms * coef.reshape(coef.shape[:1] + (1,) * (terms.dim() - 2) + (5,))).sum(-1)
    else:
        gamma = (coef @ terms.reshape(-1, 5).T).reshape((len(params),) + k2.shape)
    out = torch.sin(gamma)
    b = p["bfactor"]
    if bool((b != 0).any()):
        out = out * torch.exp(-b.reshape((-1,) + (1,) * (out.dim() - 1)) * k2 / 4)
    return out


def ctf_2d(params: CTFParams, size: int, pixel_size: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(N, D, D)`` CTF images in the centered Fourier layout for a box of ``size`` pixels
    of ``pixel_size`` Å (frequencies ``(i − D//2) / (D · pixel_size)`` 1/Å)."""
    device = params.defocus_u.device if device is None else device
    freqs = freq_grid_2d(size, device=device, dtype=torch.float64) / pixel_size
    return ctf_from_freqs(freqs, params.to(dtype=torch.float64)).to(dtype)

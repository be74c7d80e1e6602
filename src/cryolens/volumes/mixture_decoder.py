"""The conformation decoder of a Gaussian-mixture volume: an MLP ``z → (Δcentres, Δamplitudes)`` added to
the mixture's base parameters (:class:`~cryolens.volumes.gaussian_mixture.GaussianMixtureVolume`).

E2GMM's decoder (Chen & Ludtke 2021; EMAN2 ``e2gmm_refine_new.py``, ``build_decoder``; docs/METHODS.md
"E2GMM"): ``layers`` × (Linear ``hidden``, ReLU), dropout, batch norm, then one linear layer to ``3N``
(+ ``N``) outputs bounded by ``tanh`` and scaled: a centre moves by at most ``shift_scale`` Å (E2GMM: half
the box) and an amplitude by at most ``amplitude_scale`` (E2GMM: half the largest amplitude). E2GMM adds
the output to the neutral model; here the last layer starts at zero, so the decoder starts *exactly* at the
neutral model for every ``z`` (EMAN2 starts it at small random weights instead). CryoFold and AtomVAE use
the same class without dropout or batch norm.

:class:`RigidGroupDecoder` (ours, for domain motions larger than any bounded per-residue move: a domain
turning through 180°): each group of Gaussians (a chain) turns about its centroid and translates as a rigid
body, and every centre may move by a bounded residue-level step on top.

Contract (the mixture volume's): ``forward(z (B, L)) → (d_centers (B, N, 3) Å, d_amplitudes (B, N) | None)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BatchNormOne(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that, in training, normalises a batch of one row with its running statistics (one
    sample has no batch statistics; E2GMM's code skips such batches instead)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                                eps=self.eps)
        return super().forward(x)


def relu_trunk(n_in: int, layers: int, hidden: int, dropout: float = 0.0, batchnorm: bool = False) -> nn.Sequential:
    """E2GMM's dense trunk ``(B, n_in) → (B, hidden)``: ``layers`` × (Linear ``hidden``, ReLU), then dropout
    (rate ``dropout``, 0 = none) and a batch norm (:class:`BatchNormOne`) when ``batchnorm``."""
    trunk: list[nn.Module] = []
    width = int(n_in)
    for _ in range(int(layers)):
        trunk += [nn.Linear(width, int(hidden)), nn.ReLU()]
        width = int(hidden)
    if dropout > 0:
        trunk.append(nn.Dropout(float(dropout)))
    if batchnorm:
        trunk.append(BatchNormOne(width))
    return nn.Sequential(*trunk)


class MixtureDecoder(nn.Module):
    """``z (B, L) → (Δcentres (B, N, 3) Å, Δamplitudes (B, N) | None)`` (module docstring).

    zdim: ``L``. n: ``N`` Gaussians. layers, hidden: the ReLU trunk. dropout: its rate after the trunk (0 = none).
    batchnorm: a batch norm after the trunk (in training a batch of one image uses the running statistics).
    amplitudes: also output ``Δamplitudes``. shift_scale: the largest move of a centre, Å. amplitude_scale: the
    largest change of an amplitude (the mixture's amplitude units)."""

    def __init__(self, zdim: int, n: int, layers: int = 3, hidden: int = 512, dropout: float = 0.3,
                 batchnorm: bool = True, amplitudes: bool = True, shift_scale: float = 1.0,
                 amplitude_scale: float = 1.0):
        super().__init__()
        self.trunk = relu_trunk(zdim, layers, hidden, dropout, batchnorm)
        width = int(hidden) if int(layers) > 0 else int(zdim)
        self.n, self.amplitudes = int(n), bool(amplitudes)
        self.out = nn.Linear(width, self.n * (4 if self.amplitudes else 3))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("shift_scale", torch.tensor(float(shift_scale)))
        self.register_buffer("amplitude_scale", torch.tensor(float(amplitude_scale)))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.trunk(z.float())
        out = torch.tanh(self.out(h))
        b = z.shape[0]
        d_centers = self.shift_scale * out[:, :3 * self.n].reshape(b, self.n, 3)
        d_amps = self.amplitude_scale * out[:, 3 * self.n:] if self.amplitudes else None
        return d_centers, d_amps


def skew(v: torch.Tensor) -> torch.Tensor:
    """``(..., 3) → (..., 3, 3)``: the cross-product matrix ``[v]×`` (``[v]× x = v × x``)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


class RigidGroupDecoder(nn.Module):
    """``z (B, L) → (Δcentres (B, N, 3) Å, None)``: rigid motion of each group plus a bounded local move.

    Centre ``j`` of group ``g`` at base position ``c_j`` goes to ``R_g (c_j − o_g) + o_g + t_g + δ_j``, with
    ``o_g`` the group's base centroid, ``R_g = exp([ω_g]×)`` (axis-angle ``ω_g`` in radians, unbounded: any
    turn), ``t_g = translation_scale · tanh(·)`` Å and ``δ_j = shift_scale · tanh(·)`` Å (``shift_scale`` 0: no
    local move). The last layers start at zero, so the decoder starts at the base model for every ``z``.

    base: ``(N, 3)`` Å base centres. groups: ``(N,)`` int group of each centre (0 … G−1). layers, hidden: the
    ReLU trunk (:func:`relu_trunk`)."""

    def __init__(self, zdim: int, base: torch.Tensor, groups: torch.Tensor, layers: int = 3, hidden: int = 256,
                 shift_scale: float = 0.0, translation_scale: float = 20.0):
        super().__init__()
        groups = torch.as_tensor(groups, dtype=torch.long)
        base = torch.as_tensor(base, dtype=torch.float32)
        g = int(groups.max()) + 1
        self.zdim = int(zdim)
        self.trunk = relu_trunk(zdim, layers, hidden)
        width = int(hidden) if int(layers) > 0 else int(zdim)
        self.rigid = nn.Linear(width, 6 * g)
        self.local = nn.Linear(width, 3 * base.shape[0]) if shift_scale > 0 else None
        for layer in (self.rigid, self.local):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        origins = torch.zeros(g, 3).index_add_(0, groups, base) / torch.bincount(groups, minlength=g)[:, None]
        self.register_buffer("base", base)
        self.register_buffer("groups", groups)
        self.register_buffer("origins", origins)
        self.shift_scale, self.translation_scale = float(shift_scale), float(translation_scale)

    def rigid_moves(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(R (B, G, 3, 3), t (B, G, 3) Å, trunk output (B, H))`` at ``z``."""
        h = self.trunk(z.float())
        p = self.rigid(h).reshape(z.shape[0], -1, 6)
        return torch.linalg.matrix_exp(skew(p[..., :3])), self.translation_scale * torch.tanh(p[..., 3:]), h

    def rigid_centers(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, N, 3)`` Å: the base centres moved by their groups' rigid motions only (no local move)."""
        return self._moved(*self.rigid_moves(z)[:2])

    def _moved(self, rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        o = self.origins[self.groups]
        x = torch.einsum("bnij,nj->bni", rot[:, self.groups], self.base - o)
        return x + o + t[:, self.groups]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        rot, t, h = self.rigid_moves(z)
        d = self._moved(rot, t) - self.base
        if self.local is not None:
            d = d + self.shift_scale * torch.tanh(self.local(h)).reshape(z.shape[0], -1, 3)
        return d, None

"""The ELBO of FSTdiff (Ullrich et al. 2019; docs/METHODS.md): variational inference on the volume and the
poses, trained on the one engine (:class:`~cryolens.inference.engine.Trainer`).

Model (:class:`VariationalReconstruction`): ``q(V)`` a
:class:`~cryolens.volumes.variational.VariationalVoxelVolume`; ``q(R, t)`` a
:class:`~cryolens.inference.variational_pose.VariationalPoseTable` (non-amortized),
:class:`~cryolens.inference.variational_pose.AmortizedPosePosterior` (an encoder) or none (the batch's
known poses). The image model is the project's (docs/CONVENTIONS.md, "Likelihood"): ``Y = C · ramp_t ·
P_R V + N``, ``P_R V`` the central slice of the grid read by trilinear interpolation at ``R · [kx, ky, 0]``
(:func:`~cryolens.volumes.voxel.sample_fourier`), Gaussian noise of power ``σ²(k)`` per Fourier shell
(learned by the ELBO unless frozen), images divided by the data scale ``norm`` first.

ELBO over ``N`` images, estimated on a batch ``b`` of ``B``::

    ELBO = Σ_i E_{q(V) q(R_i, t_i)}[log p(Y_i | V, R_i, t_i)] − KL(q(V) ‖ p(V)) − Σ_i KL(q(R_i, t_i) ‖ p(R, t))
         ≈ N · mean_{i ∈ b} (ℓ̂_i − KL_i) − KL_V

with ``ℓ̂_i`` the Monte Carlo estimate over ``samples`` joint draws of ``V`` (one grid per draw, shared by the
batch) and of each image's pose (``analytic``: the expectation over ``q(V)`` in closed form given the
pose, ``|Y − C·ramp·P_R μ|² + C² Σ_j a_j² E|V_j − μ_j|²`` per pixel with ``a_j`` the trilinear weights,
Monte Carlo over the pose only: the same ELBO with a lower-variance gradient for the variances), the
Gaussian log-density including its normaliser (:func:`~cryolens.inference.likelihood.log_normaliser`,
which matters while ``σ²`` is learned); the KL
terms are closed form (:meth:`VariationalVoxelVolume.kl`, :func:`rotation_kl_uniform`, :func:`shift_kl`).
The engine minimises ``loss = −ELBO / (N · P)`` (``P`` the pixels inside the likelihood's shell limit),
the per-pixel negative ELBO, so learning rates do not depend on the box or the dataset size.
"""

from __future__ import annotations

import torch
from torch import nn

from ..imaging.ctf import ctf_2d
from ..imaging.fft import fft2_centered
from ..imaging.forward import shift_and_ctf
from ..imaging.grids import freq_grid_2d, shell_index_2d
from ..volumes.variational import VariationalVoxelVolume
from ..volumes.voxel import sample_fourier
from .likelihood import gaussian_log_likelihood, log_normaliser, shell_weights
from .variational_pose import rotation_kl_uniform, sample_poses, shift_kl


class VariationalReconstruction(nn.Module):
    """``q(V) q(R, t)`` and the ELBO (module docstring); the engine's contract:
    ``forward(batch) → {"loss", "nll", "kl_volume", "kl_pose"}`` (per pixel, per image).

    volume: ``q(V)``. poses: a pose posterior (``poses(index, images[, shifts])`` → ``(R̄, log σ, t̄,
    log s | None)``) or None (the batch's ``rotation`` and ``shift`` are used as they are). n_images: ``N``.
    pixel_size: Å/px (for the CTF). noise_power: ``(D//2+1,)`` initial ``σ²(k)`` (the normalised images'
    units). learn_noise: ``σ²`` is a parameter. samples: Monte Carlo draws per step. shift_prior_std: the
    shift prior's std (px). pose_lr: learning rate of the pose posterior's parameters; var_lr: of ``q(V)``'s
    log-variances and of ``log σ²`` (None: the engine's). lr_decay: every learning rate is multiplied by
    this factor per epoch (1: constant), so that Adam's steady jitter shrinks and the variances settle.
    analytic: the expectation over ``q(V)`` in closed form instead of by sampling (module docstring)."""

    def __init__(self, volume: VariationalVoxelVolume, poses: nn.Module | None, n_images: int, pixel_size: float,
                 noise_power: torch.Tensor, learn_noise: bool = True, samples: int = 1, shift_prior_std: float = 2.0,
                 pose_lr: float | None = None, var_lr: float | None = None, lr_decay: float = 1.0,
                 analytic: bool = False):
        super().__init__()
        self.analytic = bool(analytic)
        self.pose_lr, self.var_lr, self.lr_decay = pose_lr, var_lr, float(lr_decay)
        self.spread_lr: float | None = None  # the pose table's log-spreads, when set (param_groups)
        d = volume.box_size
        self.volume, self.poses = volume, poses
        self.n_images, self.pixel_size, self.samples = int(n_images), float(pixel_size), int(samples)
        self.shift_prior_std, self.k_max = float(shift_prior_std), d // 2 - 1
        log_noise = torch.log(torch.as_tensor(noise_power, dtype=torch.float32)).clone()
        if learn_noise:
            self.log_noise = nn.Parameter(log_noise)
        else:
            self.register_buffer("log_noise", log_noise)
        plane = torch.cat([freq_grid_2d(d).reshape(-1, 2), torch.zeros(d * d, 1)], dim=1)
        self.register_buffer("plane", plane, persistent=False)
        self.n_pixels = int((shell_index_2d(d) <= self.k_max).sum())
        self.register_buffer("norm", torch.ones(()))
        self.generator: torch.Generator | None = None  # None: the global RNG (checkpointed by the engine)

    def coords(self, rotations: torch.Tensor) -> torch.Tensor:
        """Slice points ``(B, D·D, 3)`` cycles/px (volume frame) of ``rotations (B, 3, 3)``: ``R · [kx, ky, 0]``."""
        return torch.einsum("bij,mj->bmi", rotations.to(self.plane.dtype), self.plane)

    def slices(self, grid: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Central slices ``(B, D, D)`` complex of a grid ``(D, D, D)`` at ``rotations (B, 3, 3)``."""
        d = self.volume.box_size
        return sample_fourier(grid, self.coords(rotations)).reshape(-1, d, d)

    def pose_posterior(self, batch: dict):
        """``(R̄, log σ, t̄, log s | None)`` of the batch, or None with known poses."""
        if self.poses is None:
            return None
        if hasattr(self.poses, "encoder"):
            return self.poses(batch["index"], batch["image"], batch.get("shift"))
        return self.poses(batch["index"])

    def log_likelihood(self, batch: dict, grid: torch.Tensor, rotations: torch.Tensor,
                       shifts: torch.Tensor | None) -> torch.Tensor:
        """``log p(Y_i | V = grid, R_i, t_i)`` ``(B,)`` with its normaliser (module docstring)."""
        y = fft2_centered(batch["image"].to(self.plane.dtype) / self.norm)
        pred = shift_and_ctf(self.slices(grid, rotations), shifts, batch.get("ctf"), self.pixel_size)
        sigma2 = self.log_noise.exp().to(self.plane.dtype)
        d = self.volume.box_size
        ll = gaussian_log_likelihood(y, pred, sigma2, self.k_max) + log_normaliser(sigma2, d, self.k_max)
        if self.analytic:  # E over q(V) of the residual's power: the slice's variance times C²
            var = self.volume.slice_variance(self.coords(rotations)).reshape(-1, d, d)
            if batch.get("ctf") is not None:
                var = var * ctf_2d(batch["ctf"], d, self.pixel_size, device=var.device, dtype=var.dtype).square()
            ll = ll - (shell_weights(sigma2, d, self.k_max) * var).sum((-2, -1))
        return ll

    def given_pose_loss(self, batch: dict, grid: torch.Tensor, rotations: torch.Tensor,
                        shifts: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` each image's share of the per-pixel negative ELBO when its pose is a point value given from
        outside (an encoder's, the metadata's): ``(KL(q(V) ‖ p(V)) / N − log p(Y_i | V = grid, R_i, t_i)) / P``;
        its batch mean is :meth:`forward`'s loss with known poses. grid: a draw of ``q(V)`` (its mean with
        ``analytic``)."""
        return (self.volume.kl() / self.n_images - self.log_likelihood(batch, grid, rotations, shifts)) / self.n_pixels

    @torch.no_grad()
    def std_map(self, samples: int, seed: int) -> torch.Tensor:
        """The per-voxel std ``(D, D, D)`` float32 CPU of the real-space map under ``q(V)`` in the images' units,
        from ``samples`` draws seeded ``seed`` (:meth:`VariationalVoxelVolume.std_map` times ``norm``)."""
        gen = torch.Generator(device=self.norm.device).manual_seed(int(seed))
        return self.volume.std_map(samples, gen).float().cpu() * float(self.norm)

    def posterior_metrics(self) -> dict[str, list[float]]:
        """Per shell, in the images' units: ``posterior_std_per_shell`` (RMS std of ``q(V)``'s free voxels),
        ``prior_std_per_shell`` (``τ``) and ``noise_power_per_shell`` (``σ²``)."""
        post_std, prior_std = (s * float(self.norm) for s in self.volume.shell_std())
        return {"posterior_std_per_shell": post_std.tolist(), "prior_std_per_shell": prior_std.tolist(),
                "noise_power_per_shell": self.noise_power().tolist()}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        post = self.pose_posterior(batch)
        ll = 0.0
        for _ in range(self.samples):
            grid = self.volume.mean_grid() if self.analytic else self.volume.sample(self.generator)
            if post is None:
                rot, sh = batch["rotation"], batch.get("shift")
            else:
                rot, sh = sample_poses(*post, generator=self.generator)
            ll = ll + self.log_likelihood(batch, grid, rot, sh) / self.samples
        kl_pose = torch.zeros_like(ll)
        if post is not None:
            kl_pose = rotation_kl_uniform(post[1].clamp_max(0.0))
            if post[3] is not None:
                kl_pose = kl_pose + shift_kl(post[2], post[3], self.shift_prior_std)
        kl_v = self.volume.kl()
        p = self.n_pixels
        loss = (-(ll - kl_pose).mean() + kl_v / self.n_images) / p
        return {"loss": loss, "nll": -ll.mean().detach() / p, "kl_volume": kl_v.detach() / (self.n_images * p),
                "kl_pose": kl_pose.mean().detach() / p}

    def param_groups(self) -> list[dict]:
        """The pose posterior's parameters, the pose table's log-spreads (``spread_lr``) and ``q(V)``'s
        log-variances in their own groups when ``pose_lr``, ``spread_lr``, ``var_lr`` are set."""
        spreads = [] if self.poses is None or self.spread_lr is None else \
            [q for name, q in self.poses.named_parameters() if name in ("log_rot_std", "log_shift_std")]
        pose = [] if self.poses is None or self.pose_lr is None else \
            [q for q in self.poses.parameters() if all(q is not r for r in spreads)]
        variances = [q for q in (self.volume.logvar, self.log_noise) if q.requires_grad]
        own = [(pose, self.pose_lr), (spreads, self.spread_lr), (variances, self.var_lr)]
        ids = {id(q) for params, lr in own if lr is not None for q in params}
        groups = [{"params": [q for q in self.parameters() if id(q) not in ids]}]
        return groups + [{"params": params, "lr": lr} for params, lr in own if params and lr is not None]

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Learning rates of epoch ``epoch`` (0-based): the starting ones times ``lr_decay ** epoch``."""
        for group in trainer.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * self.lr_decay**epoch

    def on_epoch_end(self, epoch: int, trainer) -> None:
        """Fold the pose table's Lie-algebra offsets into its means (the retraction)."""
        if hasattr(self.poses, "fold"):
            self.poses.fold()

    def noise_power(self) -> torch.Tensor:
        """``σ²(k)`` ``(D//2+1,)`` float32 in the images' own units (``norm²`` times the learned one)."""
        return (self.log_noise.detach().exp() * self.norm.square()).float()

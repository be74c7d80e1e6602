"""Amortized poses with a variational volume: a pose encoder (cryoAI, CryoPoseNet) and FSTdiff's ``q(V)``
trained together on the one engine — the variational treatment of the volume offered to a recipe that
otherwise fits a point estimate of a voxel grid by SGD (``cryoposenet --set variational_volume=true``).

Model (:class:`AmortizedVariationalVolume`): the encoder gives each image a point pose ``(R_i, t_i)``;
``q(V)`` is a :class:`~cryolens.volumes.variational.VariationalVoxelVolume` (a Gaussian per Fourier voxel,
per-shell prior ``τ²(k)``, learned noise ``σ²(k)``) inside a
:class:`~cryolens.inference.variational.VariationalReconstruction` with no pose posterior of its own. Each
step draws one grid from ``q(V)`` by reparametrisation (``samples`` draws, averaged; its mean with
``analytic``), shared by the batch
and by every pose hypothesis the encoder's winner-take-all or symmetrized loss compares; each image's error
is its share of the per-pixel negative ELBO (:meth:`~VariationalReconstruction.given_pose_loss`), so the
batch mean is ``(−mean_i log p(Y_i | V, R_i, t_i) + KL(q(V) ‖ p(V)) / N) / P``. The poses are point
estimates (an amortized MAP, the encoder's), not a distribution: no pose KL. In eval mode (pose inference
after training) the grid is the posterior mean.
"""

from __future__ import annotations

from typing import Any

import torch

from .amortized import AmortizedPoseModel
from .variational import VariationalReconstruction


class AmortizedVariationalVolume(AmortizedPoseModel):
    """Pose encoder + ``q(V)`` (module docstring). box_size, pixel_size, config: as
    :class:`~cryolens.inference.amortized.AmortizedPoseModel`. elbo: ``q(V)`` and its likelihood, built on
    the data scale (:func:`~cryolens.inference.variational_setup.volume_model`, no pose posterior).
    volume_lr: Adam learning rate of ``q(V)``'s means and prior (None: the engine's)."""

    def __init__(self, box_size: int, pixel_size: float, config: Any, elbo: VariationalReconstruction,
                 volume_lr: float | None = None):
        super().__init__(box_size, pixel_size, config)
        if elbo.poses is not None:
            raise ValueError("the encoder gives the poses: the ELBO model must have no pose posterior")
        self.elbo, self.volume_lr = elbo, volume_lr
        self._grid: torch.Tensor | None = None  # the step's draw of q(V), while forward runs

    def set_norm(self, value: float) -> None:
        self.encoder.set_scale(value)
        self.elbo.norm.fill_(float(value))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        vol, k = self.elbo.volume, self.elbo.samples
        outs = []
        for _ in range(k):  # the ELBO model's Monte Carlo draws per step, averaged
            self._grid = vol.mean_grid() if self.elbo.analytic else vol.sample(self.elbo.generator)
            try:
                outs.append(super().forward(batch))
            finally:
                self._grid = None
        out = {key: sum(o[key] for o in outs) / k for key in outs[0]}
        out["kl_volume"] = vol.kl().detach() / (self.elbo.n_images * self.elbo.n_pixels)
        return out

    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Every learning rate times the ELBO model's ``lr_decay ** epoch``."""
        self.elbo.on_epoch_start(epoch, trainer)

    def image_errors(self, images, rotations, shifts, ctf) -> torch.Tensor:
        grid = self.elbo.volume.mean_grid() if self._grid is None else self._grid
        return self.elbo.given_pose_loss({"image": images, "ctf": ctf}, grid, rotations, shifts)

    def render_map(self) -> torch.Tensor:
        return self.elbo.volume.render()[0] * self.elbo.norm

    def param_groups(self) -> list[dict]:
        """The encoder at the engine's rate; ``q(V)``'s means and prior at ``volume_lr``; its log-variances and
        the noise at the ELBO model's ``var_lr``."""
        groups = self.elbo.param_groups()
        if self.volume_lr is not None:
            groups[0]["lr"] = self.volume_lr
        return [{"params": list(self.encoder.parameters())}, *groups]

    @torch.no_grad()
    def posterior_outputs(self, samples: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``({"std": (D, D, D)}, metrics)``: the per-voxel std of the real-space map under ``q(V)`` from
        ``samples`` draws, in the images' units, and the per-shell posterior, prior and noise summaries."""
        return {"std": self.elbo.std_map(samples, seed)}, self.elbo.posterior_metrics()

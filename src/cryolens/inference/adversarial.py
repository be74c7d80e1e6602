"""Adversarial (likelihood-free) training on the one engine: a Wasserstein GAN with gradient penalty
(WGAN-GP; Gulrajani et al. 2017) whose generator is the physics (:mod:`~cryolens.inference.simulator`), as in
CryoGAN and Multi-CryoGAN (docs/METHODS.md).

- :class:`Critic`: a CNN on ``(B, D, D)`` images → ``(B,)`` scores, LeakyReLU, no normalisation layers (the
  gradient penalty is per sample, so batch statistics must not mix samples).
- :func:`gradient_penalty`: ``λ · mean((‖∇ₓ D(x̂)‖₂ − 1)²)`` at ``x̂ = ε x_real + (1 − ε) x_fake``.
- :func:`critic_losses`: the critic's loss ``mean D(fake) − mean D(real) + GP`` and the Wasserstein estimate
  ``mean D(real) − mean D(fake)``.
- :class:`AdversarialModel`: the engine's model. The engine's optimiser (Adam, ``betas`` from
  :meth:`~AdversarialModel.param_groups`) steps the generator on ``−mean D(blur(fake))``; before every
  generator step :meth:`~AdversarialModel.before_step` takes ``n_critic`` critic steps with the critic's own
  Adam (an engine hook; the optimiser is checkpointed through ``inner_optimizers``), one per ``1/n_critic``
  of the engine's batch of real images (so the engine batch holds ``n_critic × batch`` real images and an
  epoch is one pass of the critic over the data). Real and fake images are both blurred by a Gaussian of
  σ = ``blur_sigma · blur_decay^epoch`` px (:func:`~cryolens.imaging.grids.gaussian_blur_2d`), with
  ``phase_flip`` first phase-flipped by their own CTFs (:meth:`~AdversarialModel.view`); the generator's
  learning rate is ``lr · lr_decay^epoch``. Real images
  are divided by ``norm`` (the data scale) before the critic sees them; the generator works in those units.
  With ``ema > 0`` the model keeps an exponential moving average of the generator's parameters (decay ``ema``
  per generator step, bias-corrected like Adam's moments: :meth:`~AdversarialModel.averaged`), the
  averaged generator of GAN practice (Yazıcı et al. 2019), which smooths the step-to-step oscillation of
  adversarial training out of the result.

Logged per step: ``loss`` (the generator's), ``critic`` (its loss with the penalty), ``gradient_penalty`` and
``wasserstein`` (means over the step's critic steps) — the Wasserstein estimate is the convergence signal.
Single process: the critic's gradients are not averaged over DDP ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..imaging.ctf import CTFParams, ctf_2d
from ..imaging.fft import fft2_centered, ifft2_centered
from ..imaging.grids import gaussian_blur_2d
from .simulator import PhysicsGenerator


class Critic(nn.Module):
    """CNN critic on ``(B, D, D)`` images (``D`` even): blocks of a 3×3 convolution and a stride-2 4×4
    convolution (LeakyReLU 0.2) halve the image until it is at most 4 px, channels ``channels`` doubling up
    to ``max_channels``; a linear layer gives one score per image."""

    def __init__(self, box_size: int, channels: int = 16, max_channels: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c, size = 1, int(channels), int(box_size)
        while size > 4:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(c, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in, c, size = c, min(2 * c, int(max_channels)), size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * size * size, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images[:, None]).flatten(1))[:, 0]


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP's penalty ``weight · mean_b (‖∇ₓ critic(x̂_b)‖₂ − 1)²`` at ``x̂ = ε real + (1 − ε) fake``
    (``real``, ``fake`` ``(B, D, D)``; ``eps (B,)`` uniform on [0, 1] unless given). Differentiable in the
    critic's parameters (``create_graph``)."""
    if eps is None:
        eps = torch.rand(real.shape[0]).to(real.device)
    e = eps.to(real.dtype).reshape(-1, *([1] * (real.dim() - 1)))
    x = (e * real.detach() + (1 - e) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


def critic_losses(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float) -> dict[str, torch.Tensor]:
    """``{"critic": mean D(fake) − mean D(real) + GP, "gradient_penalty": GP, "wasserstein": mean D(real) −
    mean D(fake)}`` for image batches ``(B, D, D)`` (:func:`gradient_penalty` with ``weight``; not computed,
    and no ``"gradient_penalty"`` term, when ``weight`` is 0)."""
    w = critic(real).mean() - critic(fake).mean()
    if weight == 0:
        return {"critic": -w, "wasserstein": w}
    gp = gradient_penalty(critic, real, fake, weight)
    return {"critic": gp - w, "gradient_penalty": gp, "wasserstein": w}


class AdversarialModel(nn.Module):
    """WGAN-GP of a :class:`PhysicsGenerator` against a :class:`Critic` on the engine (module docstring).
    config: ``n_critic``, ``gp_weight``, ``lr``, ``critic_lr``, ``betas`` (2 floats), ``batch_size`` (fake
    images per generator step), ``blur_sigma`` (px), ``blur_decay`` (per epoch), optionally ``phase_flip``,
    ``lr_decay`` (per epoch), ``gp_every``, ``ema``; ``constrain`` (optional): a
    callable run on the generator's volume before every step (e.g. positivity, a projection)."""

    def __init__(self, generator: PhysicsGenerator, critic: Critic, config: Any, norm: float = 1.0,
                 constrain=None):
        super().__init__()
        self.generator, self.critic, self.constrain = generator, critic, constrain
        self.n_critic, self.gp_weight = int(config.n_critic), float(config.gp_weight)
        self.gp_every = max(1, int(getattr(config, "gp_every", 1)))
        self.batch_size, self.betas = int(config.batch_size), tuple(float(b) for b in config.betas)
        self.sigma0, self.decay = float(config.blur_sigma), float(config.blur_decay)
        self.sigma = self.sigma0
        self.phase_flip = bool(getattr(config, "phase_flip", False))
        self.lr0, self.lr_decay = float(config.lr), float(getattr(config, "lr_decay", 1.0))
        self.register_buffer("norm", torch.tensor(float(norm)))
        self.ema = float(getattr(config, "ema", 0.0))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.float64))
        self.n_ema = len(list(generator.parameters())) if self.ema > 0 else 0
        for i, p in enumerate(list(generator.parameters())[:self.n_ema]):
            self.register_buffer(f"ema_{i}", torch.zeros_like(p.detach()))
        self.critic_optimizer = torch.optim.Adam(critic.parameters(), lr=float(config.critic_lr), betas=self.betas)

    def param_groups(self) -> list[dict]:
        """The engine optimiser's groups: the generator's parameters with the GAN's Adam betas."""
        return [{"params": list(self.generator.parameters()), "betas": self.betas}]

    def update_average(self) -> None:
        """One step of the generator's moving average (no-op when ``ema`` is 0): ``a ← ema·a + (1 − ema)·θ``."""
        if self.ema <= 0:
            return
        with torch.no_grad():
            for a, p in zip(self._ema_buffers(), self.generator.parameters()):
                a.lerp_(p.detach(), 1.0 - self.ema)
            self.ema_steps += 1

    def averaged(self) -> list[torch.Tensor]:
        """The generator's averaged parameters, bias-corrected (``a / (1 − emaᵗ)`` after ``t`` updates), in
        the order of ``generator.parameters()``; the current parameters when there is no average yet."""
        t = float(self.ema_steps)
        if self.ema <= 0 or t == 0:
            return [p.detach().clone() for p in self.generator.parameters()]
        return [a.detach() / (1.0 - self.ema ** t) for a in self._ema_buffers()]

    def _ema_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, f"ema_{i}") for i in range(self.n_ema)]

    def use_average(self) -> None:
        """Load :meth:`averaged` into the generator (at the end of training, for the outputs)."""
        with torch.no_grad():
            for p, a in zip(list(self.generator.parameters()), self.averaged()):
                p.copy_(a)
        if self.constrain is not None:
            with torch.no_grad():
                self.constrain(self.generator.volume)

    def inner_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optimizer}

    def on_epoch_start(self, epoch: int, trainer: Any) -> None:
        """The epoch's blur σ and generator learning rate (``lr · lr_decay^epoch``)."""
        self.sigma = self.sigma0 * self.decay ** epoch
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.lr0 * self.lr_decay ** epoch

    def blur(self, images: torch.Tensor) -> torch.Tensor:
        return gaussian_blur_2d(images, self.sigma)

    def view(self, images: torch.Tensor, ctf: CTFParams | None) -> torch.Tensor:
        """What the critic sees of ``images (B, D, D)`` (``D`` even): phase-flipped by their CTFs' signs when
        ``phase_flip`` (and CTFs are given: each frequency times the sign of its CTF, a per-frequency
        orthogonal map, so white noise stays white; the Nyquist row and column are left as they are), then
        blurred (:meth:`blur`)."""
        if self.phase_flip and ctf is not None:
            sign = torch.where(ctf_2d(ctf, images.shape[-1], self.generator.pixel_size, images.device) < 0, -1.0, 1.0)
            sign[:, 0, :] = sign[:, :, 0] = 1.0  # the Nyquist row and column have no Friedel mate on the grid
            images = ifft2_centered(fft2_centered(images) * sign).real
        return self.blur(images)

    def before_step(self, batch: dict, trainer: Any) -> dict[str, torch.Tensor]:
        """``n_critic`` critic steps on the batch's real images, split in ``n_critic`` parts, each against as
        many fresh fakes; the penalty on critic steps ``0, gp_every, 2·gp_every …`` of the ``n_critic`` only,
        weighted ``gp_every × gp_weight`` (lazy regularisation; 1: every step, WGAN-GP's own); returns the
        means of their terms over the steps that have them (:func:`critic_losses`)."""
        if self.constrain is not None:
            with torch.no_grad():
                self.constrain(self.generator.volume)
        self.update_average()
        real = batch["image"] / self.norm
        ctf = batch.get("ctf")
        terms: list[dict[str, torch.Tensor]] = []
        for i, idx in enumerate(torch.tensor_split(torch.arange(len(real)), self.n_critic)):
            if len(idx) == 0:
                continue
            with torch.no_grad():
                fake, fake_ctf = self.generator.draw(len(idx))
            weight = self.gp_weight * self.gp_every if i % self.gp_every == 0 else 0.0
            out = critic_losses(self.critic, self.view(real[idx], None if ctf is None else ctf[idx.to(real.device)]),
                                self.view(fake, fake_ctf), weight)
            self.critic_optimizer.zero_grad(set_to_none=True)
            out["critic"].backward()
            self.critic_optimizer.step()
            terms.append({k: v.detach() for k, v in out.items()})
        keys = {k for t in terms for k in t}
        return {k: torch.stack([t[k] for t in terms if k in t]).mean() for k in sorted(keys)}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The generator's loss ``−mean D(view(fake))`` on ``batch_size`` fresh fakes (:meth:`view`)."""
        score = self.critic(self.view(*self.generator.draw(self.batch_size))).mean()
        return {"loss": -score}

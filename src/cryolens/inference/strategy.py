"""The inference strategy: how a hidden variable of the images is inferred while the one training engine
(:class:`~cryolens.inference.engine.Trainer`) fits the volume (docs/ARCHITECTURE.md, "Interfaces").

A strategy owns the current values of its hidden variable (e.g. a pose per image) and plugs into the
engine as a callback; the engine calls, in this order,

- ``on_epoch_start(epoch, trainer)``: before the epoch's first batch (0-based ``epoch``; after the model's
  own ``on_epoch_start``), e.g. a pose search of every image against the current volume, or the set-up of
  a search done batch by batch;
- ``before_batch(batch, trainer) → batch``: before the model sees a batch (inside the engine's autocast),
  the batch dict (:class:`~cryolens.inference.engine.ParticleBatches`: ``index (B,)``, ``image (B, D, D)``,
  ...) with the strategy's values for these images filled in, e.g. ``rotation (B, 3, 3)`` image → volume
  frame and ``shift (B, 2)`` px;
- ``on_epoch_end(epoch, trainer)``: after the epoch's last step, before its checkpoint is written (e.g. the
  merge of what every DDP rank inferred);
- ``state_dict()`` / ``load_state_dict(state)``: what the checkpoint keeps of the strategy (saved under
  ``"strategies"``, one entry per strategy in order) so that a resumed run continues bit for bit.

Strategies for different hidden variables combine: the engine calls each in the order given. A strategy
that infers nothing during training (amortized encoders are parameters of the model) needs none.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class InferenceStrategy(Protocol):
    """A hidden-variable strategy on the engine (module docstring)."""

    def on_epoch_start(self, epoch: int, trainer: Any) -> None:
        """Before epoch ``epoch`` (0-based)."""
        ...

    def before_batch(self, batch: dict, trainer: Any) -> dict:
        """The batch with this strategy's hidden-variable values filled in."""
        ...

    def on_epoch_end(self, epoch: int, trainer: Any) -> None:
        """After epoch ``epoch``'s last step, before its checkpoint."""
        ...

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the strategy."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s result."""
        ...

"""What an algorithm plugs into the training step.

The trainer collects a scored batch (and HeRL may revise it), then asks the algorithm for the
whole batch's advantages; the update runs ``epochs`` passes over ``mini_batches`` of the batch,
one optimizer step each, asking the algorithm for the per-token policy loss of every
micro-batch and, after each step, for anything else it trains (PPO's critic). KL to a reference
(``beta``) and the entropy bonus are added by the update for every algorithm.

An algorithm that needs a model of its own builds it from the config in its constructor and
saves it through :meth:`state` (JSON) and :meth:`tensors` (safetensors) in checkpoints.
"""

from __future__ import annotations

import torch

from explorl.batch import TrainBatch, UpdateBatch


class Algorithm:
    epochs: int = 1
    """Passes over each batch (PPO epochs)."""

    def bind(self, update) -> None:
        """Called once the policy update exists (for the policy's and the reference's
        log-probs, :class:`explorl.algorithms.update.PolicyUpdate`)."""

    def advantages(self, batch: TrainBatch, loss_mask: torch.Tensor) -> torch.Tensor:
        """Per-token advantages ``[N, L]`` of the whole batch."""
        raise NotImplementedError

    def policy_loss(self, logps: torch.Tensor, old_logps: torch.Tensor,
                    advantages: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss ``[n, L]`` of a micro-batch (gradients through ``logps``) and a bool
        mask of the tokens where clipping bound it."""
        raise NotImplementedError

    def mini_batches(self, size: int, step: int, epoch: int) -> list:
        """Row selections of a batch of ``size`` rows, one optimizer step each."""
        return [slice(None)]

    def after_policy_step(self, mini: UpdateBatch, rows) -> dict:
        """Train anything else (a critic) on the mini-batch the policy just stepped on, whose
        ``rows`` index the whole batch; returns its metrics."""
        return {}

    def state(self) -> dict:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` and :meth:`tensors` from a checkpoint."""

"""What an algorithm plugs into the training step.

The trainer collects a scored batch (and HeRL may revise it), then asks the algorithm for the
whole batch's :class:`~explorl.batch.Advantages`: the advantages and anything else its loss
reads (the sampling policy's log-probs, a critic's values and returns). The update runs
``epochs`` passes over ``mini_batches`` of the batch, one optimizer step each, with the
algorithm's ``policy_loss`` as the policy-gradient term (:mod:`explorl.algorithms.terms`),
and after each step lets the algorithm train anything else on the same rows (PPO's critic).
After the update the algorithm observes the step (PPO's KL controller).

An algorithm that needs a model of its own builds it from the config in its constructor, on
``device``, and saves it through :meth:`state` (JSON) and :meth:`tensors` (safetensors).
"""

from __future__ import annotations

import torch

from explorl.batch import Advantages, TrainBatch, UpdateBatch
from explorl.models.logprobs import LogProbs


class Algorithm:
    epochs: int = 1
    """Passes over each batch (PPO epochs)."""

    def advantages(self, batch: TrainBatch, loss_mask: torch.Tensor,
                   logprobs: LogProbs) -> Advantages:
        """The whole batch's estimate; ``logprobs`` gives the policy's and the reference's
        log-probs of a rollout, for algorithms that need them."""
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

    def after_policy_step(self, mini: UpdateBatch) -> dict:
        """Train anything else (a critic) on the mini-batch the policy just stepped on; returns
        its metrics."""
        return {}

    def observe(self, estimate: Advantages) -> None:
        """After the update: adapt whatever follows the training (a KL coefficient)."""

    def state(self) -> dict:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` and :meth:`tensors` from a checkpoint."""

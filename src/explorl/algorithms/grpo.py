"""GRPO (Shao et al. 2024) and the variants TRL names: Dr.GRPO, DAPO, RLOO, GSPO, CISPO.

Advantages are group-relative: each sample's reward against its prompt's other samples
(:mod:`explorl.algorithms.advantages`), the same for every token of a completion. The policy
loss is PPO's clipped surrogate over per-token ratios; with ``importance_sampling_level=
sequence`` (GSPO) one ratio per completion; with ``loss_type=cispo`` CISPO's clipped, detached
weight on ``log pi``. No critic and no extra model: the reference for the KL term belongs to the
update (:mod:`explorl.algorithms.update`).
"""

from __future__ import annotations

import torch

from explorl.algorithms.advantages import AdvantageInputs, compute_advantages
from explorl.algorithms.base import Algorithm
from explorl.algorithms.losses import (
    cispo_surrogate,
    clipped_surrogate,
    sequence_ratio,
    token_ratio,
)
from explorl.batch import Advantages, TrainBatch
from explorl.models.logprobs import LogProbs


class GRPO(Algorithm):
    """Group-relative advantages and the clipped (or GSPO, or CISPO) policy loss.

    Reads ``advantage_estimator`` and ``scale_rewards`` (advantages); ``epsilon``,
    ``epsilon_high`` (default ``epsilon``), ``dual_clip``, ``importance_sampling_level`` and
    ``loss_type`` (loss).
    """

    def __init__(self, cfg, device=None):
        self.epochs = cfg.num_iterations
        self.estimator = cfg.advantage_estimator
        # dr_grpo's estimator divides by no std whatever this says (the config refuses others)
        self.scale_rewards = "group" if cfg.scale_rewards == "auto" else cfg.scale_rewards
        self.epsilon = cfg.epsilon
        self.epsilon_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        self.dual_clip, self.loss_type = cfg.dual_clip, cfg.loss_type
        self.sequence_level = cfg.importance_sampling_level == "sequence"

    def advantages(self, batch: TrainBatch, loss_mask: torch.Tensor,
                   logprobs: LogProbs | None = None) -> Advantages:
        """Per-token advantages ``[N, L]`` of the whole batch (groups of any size; unknown
        rewards get 0)."""
        inputs = AdvantageInputs(batch.rewards, batch.rollout.group_ids, loss_mask)
        return Advantages(compute_advantages(self.estimator, inputs, self.scale_rewards))

    def policy_loss(self, logps: torch.Tensor, old_logps: torch.Tensor,
                    advantages: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss ``[n, L]`` and where clipping bound it."""
        ratio = sequence_ratio(logps, old_logps, mask) if self.sequence_level \
            else token_ratio(logps, old_logps)
        if self.loss_type == "cispo":
            return cispo_surrogate(logps, ratio, advantages, self.epsilon_high)
        return clipped_surrogate(ratio, advantages, self.epsilon, self.epsilon_high,
                                 self.dual_clip)

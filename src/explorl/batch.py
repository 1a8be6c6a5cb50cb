"""The plain data one training step hands along, in the order it flows.

``ScoredBatch``: samples with their rewards, what collecting returns (whole on every process).
``TrainBatch``: what the algorithm trains on, the scored batch after HeRL's changes if any.
``UpdateBatch``: this process's rows of it, with what the loss needs for them.
``OfflineBatch``: scored samples from a fixed data set, for the offline methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorl.algorithms.losses import Normalizer
from explorl.rewards.base import Rewards
from explorl.rollout.engine import Rollout


@dataclass
class ScoredBatch:
    """Samples of one request with their rewards; ``rollout.group_ids`` index ``rows``."""

    rollout: Rollout
    rows: list[dict]  # the data row of each prompt of the request
    texts: list[str]  # each sample's completion text
    rewards: Rewards  # weighted total, per function, per-criterion grades, failures
    passed: torch.Tensor  # [N] bool: the first reward function at or above success_threshold
    seconds: dict[str, float]  # spent generating and scoring (this process)

    def __len__(self) -> int:
        return len(self.rollout)

    @property
    def generated_tokens(self) -> int:
        return int(self.rollout.completion_mask.sum())

    def passes_by_prompt(self) -> list[list[bool]]:
        """Pass flags of each prompt's samples whose reward is known."""
        known = ~self.rewards.total.isnan()
        return [self.passed[(self.rollout.group_ids == g) & known].tolist()
                for g in range(len(self.rows))]


@dataclass
class OfflineBatch:
    """Scored samples from a fixed data set (offline methods): prompts left-padded,
    completions (EOS included) right-padded."""

    prompt_ids: torch.Tensor  # [N, Lp] long
    prompt_mask: torch.Tensor  # [N, Lp] long
    completion_ids: torch.Tensor  # [N, T] long
    completion_mask: torch.Tensor  # [N, T] long
    rewards: torch.Tensor  # [N] float


@dataclass
class TrainBatch:
    """The samples an algorithm trains on, row by row."""

    rollout: Rollout
    rewards: torch.Tensor  # [N], NaN = unknown (masked)
    texts: list[str]
    revision: torch.Tensor | None = None  # [N] bool: HeRL rows holding a revision
    behaviour_logps: torch.Tensor | None = None  # [N, L]: of the policy that wrote a revision
    trained_under: list | None = None  # per row: False, or the prompt a revision is trained under
    old_logps: torch.Tensor | None = None  # [N, L] of the sampling policy, when an algorithm
    # computed them for its advantages (PPO)

    @classmethod
    def of(cls, batch: ScoredBatch) -> TrainBatch:
        return cls(batch.rollout, batch.rewards.total, batch.texts)

    def __len__(self) -> int:
        return len(self.rollout)

    def loss_mask(self, mask_truncated: bool) -> torch.Tensor:
        """Completion tokens that carry the loss: not those of unknown rewards, nor (with
        ``mask_truncated``) of completions cut off without EOS."""
        mask = self.rollout.completion_mask.clone()
        mask[self.rewards.isnan()] = 0
        if mask_truncated:
            mask[self.rollout.truncated] = 0
        return mask


@dataclass
class UpdateBatch:
    """This process's rows of a :class:`TrainBatch`, ready for the loss."""

    rollout: Rollout
    advantages: torch.Tensor  # [n, L]
    loss_mask: torch.Tensor  # [n, L]
    old_logps: torch.Tensor | None  # [n, L]; None when the ratio is exactly 1
    ref_logps: torch.Tensor | None  # [n, L]; None without a KL term
    revision: torch.Tensor | None  # [n] bool: off-policy rows (HeRL revisions)
    behaviour_logps: torch.Tensor | None  # [n, L]: the denominator of a revision's ratio
    norm: Normalizer  # counts of the whole batch, over every process
    generated_tokens: int  # completion tokens of the whole batch (entropy is their mean)
    policy_mask: torch.Tensor | None = None  # [n, L]: tokens that carry the policy loss
    # (top_entropy_quantile < 1); None: every token of loss_mask

    def __len__(self) -> int:
        return len(self.rollout)

    def select(self, rows) -> UpdateBatch:
        """The rows ``rows`` as a batch of their own: a mini-batch, with its own counts."""
        def own(t):
            return None if t is None else t[rows]

        mask = self.loss_mask[rows]
        norm = Normalizer(int(mask.shape[0]), int(mask.sum()), self.norm.max_completion_length)
        rollout = self.rollout.select(rows)
        return UpdateBatch(rollout, self.advantages[rows], mask, own(self.old_logps),
                           own(self.ref_logps), own(self.revision), own(self.behaviour_logps),
                           norm, int(rollout.completion_mask.sum()), own(self.policy_mask))

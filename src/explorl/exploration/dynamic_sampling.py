"""Dynamic sampling (DAPO, Yu et al. 2025): a group whose rewards are all equal has zero
advantage and teaches nothing, so it is dropped and the batch is refilled with the groups of new
prompts, at most ``max_rounds`` times a step. Each refill samples as many new prompts as groups
are missing. The dropped groups' tokens were generated all the same: they count in the run's
token budget (``tokens/total``), so equal-budget comparisons charge dynamic sampling for them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from explorl.batch import ScoredBatch
from explorl.rewards.base import Rewards
from explorl.rollout.engine import Rollout


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor,
                       num_groups: int) -> list[int]:
    """Groups with two different known rewards (a non-zero advantage somewhere). Unknown (NaN)
    rewards are ignored; a group with fewer than two known rewards is not informative."""
    out = []
    for g in range(num_groups):
        known = rewards[(group_ids == g) & ~rewards.isnan()]
        if known.numel() >= 2 and bool((known != known[0]).any()):
            out.append(g)
    return out


def join_groups(parts: list[tuple[ScoredBatch, list[int]]], pad_id: int) -> ScoredBatch:
    """The samples of the chosen groups of each batch, as one batch: groups numbered in order,
    rows, texts, rewards and timings alike."""
    rollouts, rows, texts, rewards, passed, seconds = [], [], [], [], [], {}
    for batch, groups in parts:
        for new_id, g in enumerate(groups, start=len(rows)):
            take = torch.nonzero(batch.rollout.group_ids == g).flatten()
            rollout = batch.rollout.select(take)
            rollout.group_ids = torch.full_like(rollout.group_ids, new_id)
            rollouts.append(rollout)
            texts += [batch.texts[i] for i in take.tolist()]
            rewards.append(_rewards_of(batch.rewards, take.tolist()))
            passed.append(batch.passed[take])
            rows.append(batch.rows[g])
        for key, value in batch.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    return ScoredBatch(Rollout.concat(rollouts, pad_id), rows, texts, Rewards.concat(rewards),
                       torch.cat(passed), seconds)


def _rewards_of(rewards: Rewards, take: list[int]) -> Rewards:
    index = torch.tensor(take, device=rewards.total.device, dtype=torch.long)
    grades = None if rewards.grades is None else [rewards.grades[i] for i in take]
    masked = int(rewards.total[index].isnan().sum())
    return Rewards(rewards.total[index], {k: v[index] for k, v in rewards.per_func.items()},
                   masked, [], grades, 0)


class DynamicSampling:
    """``fill(first, more)``: keep ``first``'s informative groups, refilling with ``more(n)``
    (the scored groups of ``n`` new prompts) until ``groups`` are kept or ``max_rounds`` refills
    were made; at most ``groups`` are kept. When no group is informative the first batch is
    returned as it is (its advantages are all zero, as under plain GRPO)."""

    def __init__(self, groups: int, max_rounds: int, pad_id: int):
        self.groups, self.max_rounds, self.pad_id = groups, max_rounds, pad_id

    def fill(self, first: ScoredBatch,
             more: Callable[[int], ScoredBatch]) -> tuple[ScoredBatch, int, dict]:
        """The batch to train on, the tokens generated for groups left out of it, metrics."""
        parts, kept, generated, batch, rounds = [], 0, 0, first, 0
        while True:
            generated += batch.generated_tokens
            chosen = informative_groups(batch.rewards.total, batch.rollout.group_ids,
                                        len(batch.rows))[: self.groups - kept]
            parts.append((batch, chosen))
            kept += len(chosen)
            if kept >= self.groups or rounds >= self.max_rounds:
                break
            rounds += 1
            batch = more(self.groups - kept)
        out = join_groups(parts, self.pad_id) if kept else first
        metrics = {"dynamic_sampling/rounds": rounds,
                   "dynamic_sampling/kept_groups": kept / self.groups,
                   "dynamic_sampling/dropped_groups": sum(len(b.rows) for b, _ in parts) - kept,
                   "dynamic_sampling/dropped_tokens": generated - out.generated_tokens}
        return out, generated - out.generated_tokens, metrics

"""Dynamic sampling (DAPO, Yu et al. 2025): a group whose rewards are all equal has zero
advantage and teaches nothing, so it is dropped and the batch is refilled with the groups of new
prompts, at most ``max_rounds`` times a step. Each refill samples as many new prompts as groups
are missing: the trainer collects them while :attr:`Selection.missing` asks for more. The
dropped groups' tokens were generated all the same: they count in the run's token budget
(``tokens/total``), so equal-budget comparisons charge dynamic sampling for them.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from explorl.batch import Rewards, Rollout, ScoredBatch, added


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
    rows, texts, rewards and timings alike; counts (an episode's tool calls) over every batch,
    dropped groups too, as their tokens are."""
    rollouts, rows, texts, rewards, passed, seconds = [], [], [], [], [], {}
    for batch, groups in parts:
        for new_id, g in enumerate(groups, start=len(rows)):
            take = torch.nonzero(batch.rollout.group_ids == g).flatten()
            rollout = batch.rollout.select(take)
            rollout.group_ids = torch.full_like(rollout.group_ids, new_id)
            rollouts.append(rollout)
            texts += [batch.texts[i] for i in take.tolist()]
            rewards.append(batch.rewards.select(take.tolist()))
            passed.append(batch.passed[take])
            rows.append(batch.rows[g])
        for key, value in batch.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    return ScoredBatch(Rollout.concat(rollouts, pad_id), rows, texts, Rewards.concat(rewards),
                       torch.cat(passed), seconds, added([b.metrics for b, _ in parts]))


class Selection:
    """One step's informative groups, gathered from the first batch and each refill: while
    :attr:`missing` is above 0, the trainer collects that many new prompts' groups and hands
    them to :meth:`add`; :meth:`result` is the batch to train on. At most ``groups`` are kept;
    when no group is informative the first batch is returned as it is (its advantages are all
    zero, as under plain GRPO)."""

    def __init__(self, first: ScoredBatch, groups: int, max_rounds: int, pad_id: int):
        self.first, self.groups, self.max_rounds, self.pad_id = first, groups, max_rounds, pad_id
        self.parts: list[tuple[ScoredBatch, list[int]]] = []
        self.kept = self.generated = self.rounds = 0
        self._take(first)

    def _take(self, batch: ScoredBatch) -> None:
        self.generated += batch.generated_tokens
        chosen = informative_groups(batch.rewards.total, batch.rollout.group_ids,
                                    len(batch.rows))[: self.groups - self.kept]
        self.parts.append((batch, chosen))
        self.kept += len(chosen)

    @property
    def missing(self) -> int:
        """Groups to refill now; 0 once the step is full or out of refills."""
        if self.kept >= self.groups or self.rounds >= self.max_rounds:
            return 0
        return self.groups - self.kept

    def add(self, batch: ScoredBatch) -> None:
        """The scored groups of a refill's new prompts."""
        self.rounds += 1
        self._take(batch)

    def result(self) -> tuple[ScoredBatch, int, dict]:
        """The batch to train on, the tokens generated for groups left out of it, metrics."""
        out = join_groups(self.parts, self.pad_id) if self.kept else \
            replace(self.first, metrics=added([b.metrics for b, _ in self.parts]))
        dropped = self.generated - out.generated_tokens
        metrics = {"dynamic_sampling/rounds": self.rounds,
                   "dynamic_sampling/kept_groups": self.kept / self.groups,
                   "dynamic_sampling/dropped_groups": sum(len(b.rows) for b, _ in self.parts)
                   - self.kept,
                   "dynamic_sampling/dropped_tokens": dropped}
        return out, dropped, metrics

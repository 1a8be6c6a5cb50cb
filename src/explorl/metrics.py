"""One step's metrics, from the whole scored batch and the update's numbers."""

from __future__ import annotations

import math

import torch

from explorl.batch import ScoredBatch


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    known = values[~values.isnan()]
    mean = float(known.mean()) if known.numel() else math.nan
    return mean, float(known.std()) if known.numel() > 1 else 0.0


def group_outcomes(batch: ScoredBatch) -> tuple[int, int, int]:
    """Groups whose known rewards are all equal; rollouts in groups all wrong; all right."""
    rewards, groups, passed = batch.rewards.total, batch.rollout.group_ids, batch.passed
    zero_std = all_wrong = all_right = 0
    for g in range(len(batch.rows)):
        member = (groups == g) & ~rewards.isnan()
        values, ok = rewards[member], passed[member]
        zero_std += int(values.numel() > 0 and bool((values == values[0]).all()))
        all_wrong += int(ok.numel()) if ok.numel() and not bool(ok.any()) else 0
        all_right += int(ok.numel()) if ok.numel() and bool(ok.all()) else 0
    return zero_std, all_wrong, all_right


def step_metrics(step: int, batch: ScoredBatch, update: dict, seconds: dict[str, float],
                 tokens_total: int, lr: float, samples_per_prompt: bool = False) -> dict:
    """Rewards, group outcomes, the update's numbers, lengths, failures, tokens and time."""
    n, n_groups = len(batch), len(batch.rows)
    mean, std = _mean_std(batch.rewards.total)
    zero_std, all_wrong, all_right = group_outcomes(batch)
    m = {"step": step, "reward/mean": mean, "reward/std": std,
         "accuracy": float(batch.passed.float().mean()),
         "frac_zero_std_groups": zero_std / n_groups,
         "frac_rollouts_all_wrong": all_wrong / n, "frac_rollouts_all_right": all_right / n,
         **update,
         "completion_length/mean": float(batch.rollout.lengths.float().mean()),
         "truncated_fraction": float(batch.rollout.truncated.float().mean()),
         "rewards/masked": batch.rewards.masked, "rewards/failed": batch.rewards.failed,
         "tokens/generated": batch.generated_tokens, "tokens/total": tokens_total,
         "temperature": float(batch.rollout.temperatures.mean()), "lr": lr,
         **{f"time/{k}": v for k, v in seconds.items()}, "time/step": sum(seconds.values())}
    m.update(batch.metrics)
    if batch.metrics.get("agent/episodes"):  # multi-turn: per episode, per call
        episodes, calls = batch.metrics["agent/episodes"], batch.metrics["agent/tool_calls"]
        m["agent/calls_per_episode"] = calls / episodes
        m["agent/call_rate"] = batch.metrics["agent/episodes_with_calls"] / episodes
        m["agent/tool_error_rate"] = batch.metrics["agent/tool_errors"] / calls \
            if calls else 0.0
    if samples_per_prompt:
        m["samples_per_prompt"] = torch.bincount(batch.rollout.group_ids,
                                                 minlength=n_groups).tolist()
    for name, values in batch.rewards.per_func.items():
        m[f"reward/{name}/mean"], m[f"reward/{name}/std"] = _mean_std(values)
    return m

"""Advantage estimators behind one small interface.

An estimator maps :class:`AdvantageInputs` and :class:`EstimatorOptions` to per-token
advantages ``[N, L]``. The group-relative ones (GRPO, RLOO, Dr.GRPO) give every token of a
completion the same value from the sequences' rewards; GAE (PPO's) works per token from token
rewards and a critic's values.

Groups may have any size (E3 gives prompts different sample counts). Rewards that are NaN are
unknown (a reward function failed): they take no part in the statistics and get advantage 0.
A group with a single known reward has no baseline and gets advantage 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class AdvantageInputs:
    rewards: torch.Tensor  # [N], NaN = unknown
    group_ids: torch.Tensor  # [N] long
    completion_mask: torch.Tensor  # [N, L]
    token_rewards: torch.Tensor | None = None  # [N, L] per-token rewards (GAE)
    values: torch.Tensor | None = None  # [N, L] a critic's values (GAE)


@dataclass
class EstimatorOptions:
    scale_rewards: str = "group"
    """Group-relative estimators: the std that divides (``group``, ``batch``, ``none``)."""
    gamma: float = 1.0
    """GAE: discount over completion tokens."""
    lam: float = 0.95
    """GAE: lambda."""


def group_baseline(rewards: torch.Tensor, group_ids: torch.Tensor,
                   leave_one_out: bool = False) -> torch.Tensor:
    """Mean reward of each sample's group (``leave_one_out``: of the group's other samples).
    NaN where it is undefined (unknown reward, or no other known sample)."""
    known = ~rewards.isnan()
    r = torch.where(known, rewards, torch.zeros_like(rewards))
    n_groups = int(group_ids.max()) + 1 if len(group_ids) else 0
    sums = r.new_zeros(n_groups).index_add_(0, group_ids, r)
    counts = r.new_zeros(n_groups).index_add_(0, group_ids, known.to(r.dtype))
    s, c = sums[group_ids], counts[group_ids]
    base = (s - r) / (c - 1) if leave_one_out else s / c
    ok = known & (c >= 2)
    return torch.where(ok, base, torch.full_like(base, float("nan")))


def group_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Unbiased std (ddof 1) of each sample's group over its known rewards; NaN below 2."""
    known = ~rewards.isnan()
    mean = group_baseline(rewards, group_ids)
    dev2 = torch.where(known & ~mean.isnan(), (rewards - mean) ** 2, torch.zeros_like(rewards))
    n_groups = int(group_ids.max()) + 1
    ss = rewards.new_zeros(n_groups).index_add_(0, group_ids, dev2)
    counts = rewards.new_zeros(n_groups).index_add_(0, group_ids, known.to(rewards.dtype))
    var = ss / (counts - 1)
    return torch.where(counts >= 2, var, torch.full_like(var, float("nan"))).sqrt()[group_ids]


def group_relative(inputs: AdvantageInputs, baseline: str = "mean",
                   scale_rewards: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """``A_i = (r_i - b_i) / (s_i + eps)`` for every token of completion i.

    b_i: group mean (``mean``, GRPO) or mean of the other samples (``loo``, RLOO).
    s_i: group std (``group``), std of all known rewards of the batch (``batch``) or 1 with
    no eps (``none``, Dr.GRPO). Stds are unbiased (ddof 1), as in TRL.
    """
    r = inputs.rewards
    b = group_baseline(r, inputs.group_ids, leave_one_out=(baseline == "loo"))
    centred = r - b
    if scale_rewards == "group":
        adv = centred / (group_std(r, inputs.group_ids) + eps)
    elif scale_rewards == "batch":
        known = r[~r.isnan()]
        std = known.std() if known.numel() >= 2 else r.new_tensor(float("nan"))
        adv = centred / (std + eps)
    elif scale_rewards == "none":
        adv = centred
    else:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}")
    adv = torch.nan_to_num(adv, nan=0.0)  # unknown reward or no baseline: no signal
    return adv.unsqueeze(-1) * inputs.completion_mask.to(adv.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each completion's masked
    tokens, in order. With ``delta_t = r_t + gamma V_{t+1} - V_t`` (no value after the last
    token): ``A_t = delta_t + gamma lam A_{t+1}``; returns ``R_t = A_t + V_t``. Both zero
    outside the mask. Unmasked tokens inside a completion (a tool's answer in an episode) are
    the environment's move, not a step: ``t + 1`` is the next masked token."""
    mask = mask.to(rewards.dtype)
    width = rewards.shape[1]
    # the masked tokens first, in order: a row's steps side by side, whatever lies between
    order = torch.argsort((1 - mask) * width + torch.arange(width, device=mask.device), dim=1,
                          stable=True)
    rewards, values, mask = (x.gather(1, order) for x in (rewards, values * mask, mask))
    # one step past the last column: no token, no value
    after = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(width)):
        delta = rewards[:, t] + gamma * next_values[:, t] - values[:, t]
        running = delta + gamma * lam * running * after[:, t]
        advantages[:, t] = running
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return tuple(torch.zeros_like(x).scatter(1, order, x) for x in (advantages, returns))


Estimator = Callable[[AdvantageInputs, EstimatorOptions], torch.Tensor]

ESTIMATORS: dict[str, Estimator] = {
    "grpo": lambda x, o: group_relative(x, "mean", o.scale_rewards),
    "rloo": lambda x, o: group_relative(x, "loo", o.scale_rewards),
    "dr_grpo": lambda x, o: group_relative(x, "mean", "none"),
    "gae": lambda x, o: gae(x.token_rewards, x.values, x.completion_mask, o.gamma, o.lam)[0],
}


def compute_advantages(name: str, inputs: AdvantageInputs,
                       options: EstimatorOptions | str = "group") -> torch.Tensor:
    """Per-token advantages ``[N, L]`` from the named estimator; ``options`` may be just the
    ``scale_rewards`` of a group-relative one."""
    if isinstance(options, str):
        options = EstimatorOptions(scale_rewards=options)
    return ESTIMATORS[name](inputs, options)

"""Policy-gradient losses over per-token log-probs: pure functions of tensors.

Clipped surrogate (Schulman et al. 2017) with asymmetric bounds (DAPO's clip-higher) and dual
clip (Ye et al. 2020); GSPO's sequence-level ratio (Zheng et al. 2025); CISPO's clipped,
detached importance weight (MiniMax-M1, 2025); KL to a reference (k1, or Schulman's low-variance
k3); and the aggregations TRL names ``grpo``, ``dapo``, ``dr_grpo`` and ``cispo``. Normalisers
are passed in, so a batch split into micro-batches or over processes gives exactly the loss of
the whole batch.
"""

from __future__ import annotations

import math

import torch

from explorl.batch import Normalizer


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float,
                      epsilon_high: float,
                      dual_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss ``max(-rho A, -clip(rho, 1-el, 1+eh) A)``; with dual clip c, negative-A
    tokens are further capped at ``-c A``. Returns (loss, where clipping bound the loss)."""
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1 - epsilon_low, 1 + epsilon_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    bound = clipped > unclipped
    if dual_clip is not None:
        cap = -dual_clip * advantages
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap, loss)
        bound = bound | dual
    return loss, bound


def token_ratio(logps: torch.Tensor, old_logps: torch.Tensor) -> torch.Tensor:
    """``pi(y_t) / pi_old(y_t)`` per token."""
    return torch.exp(logps - old_logps)


def sequence_ratio(logps: torch.Tensor, old_logps: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """GSPO's ratio ``(pi(y) / pi_old(y)) ** (1 / |y|)``: the geometric mean of the tokens'
    ratios over each completion's trained tokens, the same for all of its positions [N, L]."""
    mask = mask.to(logps.dtype)
    mean_log = ((logps - old_logps) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return torch.exp(mean_log).unsqueeze(-1).expand_as(logps)


def cispo_surrogate(logps: torch.Tensor, ratio: torch.Tensor, advantages: torch.Tensor,
                    cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO's per-token loss ``-sg(min(rho, cap)) * A * log pi``: every token keeps a gradient,
    its weight bounded by ``cap``. Returns (loss, where the cap bound a positive-A token)."""
    weight = ratio.clamp(max=cap).detach()
    return -weight * advantages * logps, (ratio > cap) & (advantages > 0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is set (0 when none is)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def entropy_threshold(entropies: torch.Tensor, top_quantile: float) -> float:
    """The ``1 - top_quantile`` quantile (linear interpolation) of the trained tokens'
    entropies: tokens at or above it are the top ``top_quantile`` share (Wang et al. 2025,
    "Beyond the 80/20 rule"). ``-inf`` (every token) when there are none or the share is 1."""
    if top_quantile >= 1 or entropies.numel() == 0:
        return float("-inf")
    return float(torch.quantile(entropies.float(), 1.0 - top_quantile))


def terminal_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards ``[N, L]``: each sequence's score on its last masked token (an
    episode's mask has holes where the tools wrote), 0 elsewhere; rows without a token or with
    an unknown (NaN) score get none."""
    mask = mask.float()
    rewards = torch.zeros_like(mask)
    columns = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask > 0, columns, 0).amax(-1)
    has_score = (mask.sum(-1) > 0) & ~scores.isnan()
    rewards[torch.arange(len(scores), device=mask.device), last] = torch.where(
        has_score, scores.float(), torch.zeros_like(mask[:, 0]))
    return rewards


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from samples of pi: k1 = log pi - log ref,
    k3 = exp(log ref - log pi) - (log ref - log pi) - 1 (non-negative, low variance)."""
    if estimator == "k1":
        return logps - ref_logps
    if estimator == "k3":
        d = ref_logps - logps
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown kl estimator {estimator!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
              norm: Normalizer) -> torch.Tensor:
    """``grpo``: mean over each sequence's tokens, then over the batch's sequences; ``dapo`` and
    ``cispo``: mean over all tokens; ``dr_grpo``: sum over tokens / (sequences x
    max_completion_length), a constant."""
    mask = mask.to(per_token.dtype)
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / max(norm.num_sequences, 1)
    if loss_type in ("dapo", "cispo"):
        return (per_token * mask).sum() / max(norm.num_tokens, 1)
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / max(norm.num_sequences * norm.max_completion_length, 1)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def with_tail(logps: torch.Tensor) -> torch.Tensor:
    """Log-probs ``[..., K]`` of a distribution's mass on K tokens, and one more bucket holding
    the rest of its mass ``[..., K + 1]``."""
    covered = torch.logsumexp(logps, dim=-1, keepdim=True).clamp(max=-1e-6)
    return torch.cat([logps, torch.log(-torch.expm1(covered))], dim=-1)


def support_divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str,
                       beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence of two distributions known on the same K tokens (log-probs
    ``[..., K]``, e.g. the teacher's top K), the rest of each one's mass in a tail bucket:
    ``reverse_kl`` = KL(student || teacher); ``jsd`` = beta KL(teacher || m) + (1 - beta)
    KL(student || m) with m = beta teacher + (1 - beta) student (the generalised JSD of GKD,
    Agarwal et al. 2024). With K the whole vocabulary the tail is empty and both are exact."""
    s, t = with_tail(student), with_tail(teacher)
    if kind == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if kind == "jsd":
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}")


def mismatch_weights(trainer_logps: torch.Tensor, sampling_logps: torch.Tensor,
                     mask: torch.Tensor, mode: str,
                     cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights ``[N, L]`` correcting for an engine whose probabilities differ from
    the trainer's (TRL's ``vllm_importance_sampling_*``; Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training"): ``rho = pi_trainer / pi_engine`` of
    each sampled token (``token_*``), or one ratio per completion, the product over its masked
    tokens (``sequence_*``); ``*_truncate`` bounds it at ``cap``, ``*_mask`` zeroes it past
    ``cap``. Tokens whose engine log-prob is NaN (not known) weigh 1. No gradient. Returns
    (weights, where the cap truncated or masked a token of ``mask``)."""
    known = ~sampling_logps.isnan()
    used = known & mask.bool()
    diff = torch.where(used, trainer_logps.detach() - sampling_logps, 0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True).expand_as(diff)
    ratio = torch.exp(diff)
    over = ratio > cap
    if mode.endswith("truncate"):
        weights = ratio.clamp(max=cap)
    elif mode.endswith("mask"):
        weights = torch.where(over, 0.0, ratio)
    else:
        raise ValueError(f"unknown importance sampling mode {mode!r}")
    return torch.where(known, weights, 1.0), over & used


def mismatch_kl(trainer_logps: torch.Tensor, sampling_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(engine || trainer) estimate from the engine's samples, ``r - 1 - log r``
    with ``r = pi_trainer / pi_engine`` (k3: non-negative); 0 where the engine's is unknown."""
    d = (trainer_logps.detach() - sampling_logps).nan_to_num(0.0)
    return torch.expm1(d) - d  # expm1: float32 keeps tiny mismatches (|d| ~ 1e-6) above 0

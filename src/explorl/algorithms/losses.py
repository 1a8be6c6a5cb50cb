"""Policy-gradient losses over per-token log-probs.

Clipped surrogate (Schulman et al. 2017) with asymmetric bounds (DAPO's clip-higher) and dual
clip (Ye et al. 2020), KL to a reference (k1, or Schulman's low-variance k3), entropy bonus, and
the three aggregations TRL names ``grpo``, ``dapo`` and ``dr_grpo``. Normalisers are passed in,
so a batch split into micro-batches gives exactly the loss of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                      epsilon_low: float, epsilon_high: float,
                      dual_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss ``max(-rho A, -clip(rho, 1-el, 1+eh) A)``; with dual clip c, negative-A
    tokens are further capped at ``-c A``. Returns (loss, where clipping bound the loss)."""
    ratio = torch.exp(logps - old_logps)
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


def shaped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """Per-token loss of off-policy (revision) tokens, HeRL's ``-A * f(rho)`` with
    ``f(rho) = rho / (rho + gamma)``: no clipping, but the weight of a token the policy finds
    unlikely or already likely stays bounded. At rho = 1 the gradient weight is
    ``gamma / (1 + gamma)^2``; ``gamma <= 0`` gives ``f(rho) = rho``."""
    ratio = torch.exp(logps - old_logps)
    shaped = ratio / (ratio + gamma) if gamma > 0 else ratio
    return -advantages * shaped


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate from samples of pi: k1 = log pi - log ref,
    k3 = exp(log ref - log pi) - (log ref - log pi) - 1 (non-negative, low variance)."""
    if estimator == "k1":
        return logps - ref_logps
    if estimator == "k3":
        d = ref_logps - logps
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown kl estimator {estimator!r}")


@dataclass
class Normalizer:
    """Batch-wide counts, so each micro-batch's loss is its share of the full-batch loss."""

    num_sequences: int  # sequences with at least one trained token
    num_tokens: int  # trained tokens in the batch
    max_completion_length: int


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
              norm: Normalizer) -> torch.Tensor:
    """``grpo``: mean over each sequence's tokens, then over sequences; ``dapo``: mean over all
    tokens; ``dr_grpo``: sum over tokens / (sequences x max_completion_length)."""
    mask = mask.to(per_token.dtype)
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / max(norm.num_sequences, 1)
    if loss_type == "dapo":
        return (per_token * mask).sum() / max(norm.num_tokens, 1)
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / max(norm.num_sequences * norm.max_completion_length, 1)
    raise ValueError(f"unknown loss_type {loss_type!r}")


"""Log-probs and entropy through the LM head a chunk of tokens at a time.

A real vocabulary makes the update's logits the largest tensor of a step: 16 rows x 256 tokens x
151,936 float32 logits are 2.5 GB, and log-softmax, its exponential and their gradients hold
several such tensors at once. Here the LM head is replaced for one forward pass by one that
returns each token's log-prob and entropy: the head, the log-softmax and the entropy run over
``chunk_size`` tokens at a time under activation checkpointing, so the backward pass also
rebuilds one chunk's logits at a time. Peak memory grows with ``chunk_size x vocab``, not with
``tokens x vocab``. Only the completion tokens (not padding) are computed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Config attributes of models whose logits are more than ``lm_head(hidden)``
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def chunkable_head(model) -> torch.nn.Linear | None:
    """The model's LM head when logits are exactly ``lm_head(hidden)`` by a plain linear layer
    without hooks (not a LoRA-wrapped head, not a soft-capped or scaled one); else None."""
    unwrapped = getattr(model, "module", model)  # DDP
    config = getattr(unwrapped, "config", None)
    get = getattr(unwrapped, "get_output_embeddings", None)
    lm_head = get() if get else None
    if type(lm_head) is not torch.nn.Linear or lm_head._forward_hooks \
            or lm_head._forward_pre_hooks:
        return None
    if any(getattr(config, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS):
        return None
    return lm_head


@contextlib.contextmanager
def stats_head(lm_head: torch.nn.Linear, completion_ids: torch.Tensor,
               completion_mask: torch.Tensor, temperatures: torch.Tensor,
               with_entropy: bool | str, entropy_at_one: bool, chunk_size: int):
    """For the duration, ``lm_head`` maps the hidden states ``[N, Lc + 1, H]`` that predict the
    completion to ``[N, Lc, 3]``: log-prob, entropy and untempered entropy (0 where not asked
    for) of each completion token (:func:`token_stats`). The model returns that as its logits.
    The head runs inside the model's forward pass, so sharded weights are gathered (FSDP) and
    gradients flow through the model's own outputs (DDP, FSDP)."""
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        stats = token_stats(hidden[:, :-1], lm_head, completion_ids, completion_mask,
                            temperatures, with_entropy, entropy_at_one, chunk_size)
        zeros = torch.zeros_like(stats[0])
        return torch.stack([zeros if t is None else t for t in stats], dim=-1)

    lm_head.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del lm_head.forward


def _chunk_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 targets: torch.Tensor, inv_temp: torch.Tensor,
                 with_entropy: bool) -> tuple[torch.Tensor, ...]:
    """Log-prob of ``targets`` and entropy under ``softmax(head(hidden) * inv_temp)`` for one
    chunk ``[m, H]``; the entropy is 0 when not asked for."""
    raw = F.linear(hidden, weight, bias).float()
    logp_all = F.log_softmax(raw * inv_temp.unsqueeze(-1), dim=-1)
    logps = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logps, torch.zeros_like(logps)
    return logps, -(logp_all.exp() * logp_all).sum(-1)


def token_stats(hidden: torch.Tensor, lm_head: torch.nn.Linear, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, temperatures: torch.Tensor,
                with_entropy: bool | str, entropy_at_one: bool, chunk_size: int,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(logps, entropy, entropy_t1)``, each ``[N, Lc]`` (0 at padding), from the hidden
    states ``[N, Lc, H]`` that predict ``completion_ids`` (see ``completion_logprobs``)."""
    where = completion_mask.nonzero(as_tuple=True)
    h, targets = hidden[where], completion_ids[where]
    inv_temp = (1.0 / temperatures.float())[where[0]]
    grad = torch.is_grad_enabled() and h.requires_grad
    logps, entropy, entropy_t1 = [], [], []
    for s in range(0, len(targets), chunk_size):
        part = (h[s:s + chunk_size], lm_head.weight, lm_head.bias, targets[s:s + chunk_size],
                inv_temp[s:s + chunk_size])
        if grad:  # keep only the chunk's inputs; rebuild its logits in the backward pass
            lp, ent = checkpoint(_chunk_stats, *part, bool(with_entropy), use_reentrant=False)
        else:
            lp, ent = _chunk_stats(*part, bool(with_entropy))
        logps.append(lp)
        entropy.append(ent if with_entropy == "grad" else ent.detach())  # else a metric only
        if entropy_at_one:
            with torch.no_grad():
                entropy_t1.append(_chunk_stats(*part[:4], torch.ones_like(part[4]), True)[1])

    def scatter(values: list[torch.Tensor]) -> torch.Tensor:
        full = torch.zeros(completion_ids.shape, dtype=torch.float32, device=hidden.device)
        if not values:
            return full
        return full.index_put(where, torch.cat(values))

    return (scatter(logps), scatter(entropy) if with_entropy else None,
            scatter(entropy_t1) if entropy_at_one else None)

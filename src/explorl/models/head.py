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
               with_entropy: bool | str, entropy_at_one: bool, chunk_size: int,
               support: torch.Tensor | int | None = None):
    """For the duration, ``lm_head`` maps the hidden states ``[N, Lc + 1, H]`` that predict the
    completion to ``[N, Lc, 3 + S]``: log-prob, entropy and untempered entropy (0 where not
    asked for) of each completion token, then the ``support`` channels (:func:`token_stats`).
    The model returns that as its logits. The head runs inside the model's forward pass, so
    sharded weights are gathered (FSDP) and gradients flow through the model's own outputs
    (DDP, FSDP)."""
    def forward(hidden: torch.Tensor) -> torch.Tensor:
        stats = token_stats(hidden[:, :-1], lm_head, completion_ids, completion_mask,
                            temperatures, with_entropy, entropy_at_one, chunk_size, support)
        zeros = torch.zeros_like(stats[0])
        channels = [(zeros if t is None else t).unsqueeze(-1) for t in stats[:3]]
        return torch.cat(channels + [t for t in stats[3:] if t is not None], dim=-1)

    lm_head.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        del lm_head.forward


def support_stats(logp_all: torch.Tensor, support: torch.Tensor | int) -> torch.Tensor:
    """``[m, S]`` from a chunk's log-probs ``[m, V]``: at the token ids ``support`` ``[m, K]``
    (``S = K``), or the ids and log-probs of the top ``support`` tokens (``S = 2K``, the ids as
    floats: exact below 2^24)."""
    if isinstance(support, int):
        top = logp_all.topk(min(support, logp_all.shape[-1]), dim=-1)
        return torch.cat([top.indices.to(logp_all.dtype), top.values], dim=-1)
    return logp_all.gather(-1, support)


def _chunk_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 targets: torch.Tensor, inv_temp: torch.Tensor, with_entropy: bool,
                 support: torch.Tensor | int | None = None) -> tuple[torch.Tensor, ...]:
    """Log-prob of ``targets``, entropy under ``softmax(head(hidden) * inv_temp)`` for one
    chunk ``[m, H]`` (0 when not asked for), and the ``support`` channels when asked for."""
    raw = F.linear(hidden, weight, bias).float()
    logp_all = F.log_softmax(raw * inv_temp.unsqueeze(-1), dim=-1)
    logps = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else torch.zeros_like(logps)
    if support is None:
        return logps, entropy
    return logps, entropy, support_stats(logp_all, support)


def token_stats(hidden: torch.Tensor, lm_head: torch.nn.Linear, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, temperatures: torch.Tensor,
                with_entropy: bool | str, entropy_at_one: bool, chunk_size: int,
                support: torch.Tensor | int | None = None) -> tuple:
    """``(logps, entropy, entropy_t1, support)``: the first three ``[N, Lc]`` (0 at padding),
    from the hidden states ``[N, Lc, H]`` that predict ``completion_ids`` (see
    ``completion_logprobs``); the last ``[N, Lc, S]`` (:func:`support_stats`) or None."""
    where = completion_mask.nonzero(as_tuple=True)
    h, targets = hidden[where], completion_ids[where]
    inv_temp = (1.0 / temperatures.float())[where[0]]
    on_support = support[where] if torch.is_tensor(support) else support
    grad = torch.is_grad_enabled() and h.requires_grad
    logps, entropy, entropy_t1, extra = [], [], [], []
    for s in range(0, len(targets), chunk_size):
        part = (h[s:s + chunk_size], lm_head.weight, lm_head.bias, targets[s:s + chunk_size],
                inv_temp[s:s + chunk_size], bool(with_entropy))
        chunk_support = on_support[s:s + chunk_size] if torch.is_tensor(on_support) \
            else on_support
        if grad:  # keep only the chunk's inputs; rebuild its logits in the backward pass
            out = checkpoint(_chunk_stats, *part, chunk_support, use_reentrant=False)
        else:
            out = _chunk_stats(*part, chunk_support)
        logps.append(out[0])
        entropy.append(out[1] if with_entropy == "grad" else out[1].detach())  # else a metric
        if support is not None:
            extra.append(out[2])
        if entropy_at_one:
            with torch.no_grad():
                entropy_t1.append(_chunk_stats(*part[:4], torch.ones_like(part[4]), True)[1])

    def scatter(values: list[torch.Tensor], width: int = 0) -> torch.Tensor:
        shape = completion_ids.shape + ((width,) if width else ())
        full = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
        if not values:
            return full
        return full.index_put(where, torch.cat(values))

    width = support_width(support, lm_head.weight.shape[0])
    return (scatter(logps), scatter(entropy) if with_entropy else None,
            scatter(entropy_t1) if entropy_at_one else None,
            scatter(extra, width) if support is not None else None)


def support_width(support: torch.Tensor | int | None, vocab: int) -> int:
    """Channels :func:`support_stats` gives per token."""
    if support is None:
        return 0
    return 2 * min(support, vocab) if isinstance(support, int) else support.shape[-1]

"""Per-token log-probs and entropies of a rollout under a model, in micro-batches.

The update trains through :meth:`LogProbs.stats` (gradients flow); the old, reference and
behaviour log-probs that the losses compare against come from :meth:`LogProbs.policy` and
:meth:`LogProbs.reference` without gradient, cut into the same micro-batches so that memory is
bounded the same way.
"""

from __future__ import annotations

import torch

from explorl.batch import Rollout
from explorl.models import lora
from explorl.models.policy import TokenStats, completion_logprobs, precision


def micro_batches(prompt_lengths: list[int], completion_lengths: list[int], size: int = 0,
                  tokens: int = 0) -> list[list[int]]:
    """Rows (by index) sorted from the longest, cut into chunks of at most ``size`` rows and
    ``tokens`` padded tokens; 0: no limit. A chunk is padded to its longest prompt plus its
    longest completion (``Rollout.trimmed``), which may belong to two rows. A row longer than
    ``tokens`` has a chunk of its own. Similar lengths share a chunk, so little is padding."""
    order = sorted(range(len(prompt_lengths)),
                   key=lambda i: -(prompt_lengths[i] + completion_lengths[i]))
    chunks: list[list[int]] = []
    for i in order:
        chunk = chunks[-1] if chunks else []
        width = max([prompt_lengths[j] for j in chunk + [i]]) + \
            max([completion_lengths[j] for j in chunk + [i]])
        if not chunk or (size and len(chunk) >= size) or \
                (tokens and (len(chunk) + 1) * width > tokens):
            chunks.append([i])
        else:
            chunk.append(i)
    return chunks


class LogProbs:
    """Log-probs of completions under the policy (``model``) or the frozen reference
    (``ref_model``; with LoRA, the base model with adapters off), in micro-batches of at most
    ``micro_batch_size`` rows and ``micro_batch_tokens`` padded tokens, the LM head run over
    ``logits_chunk_size`` tokens at a time, under bf16 autocast when ``bf16``."""

    def __init__(self, model, ref_model=None, *, bf16: bool = False, micro_batch_size: int = 0,
                 micro_batch_tokens: int = 0, logits_chunk_size: int = 512):
        self.model, self.ref_model, self.bf16 = model, ref_model, bf16
        self.micro_batch_size, self.micro_batch_tokens = micro_batch_size, micro_batch_tokens
        self.logits_chunk_size = logits_chunk_size

    @classmethod
    def from_config(cls, cfg, model, ref_model=None) -> LogProbs:
        return cls(model, ref_model, bf16=cfg.bf16, micro_batch_size=cfg.micro_batch_size,
                   micro_batch_tokens=cfg.micro_batch_tokens,
                   logits_chunk_size=cfg.logits_chunk_size)

    def micro_batches(self, rollout: Rollout) -> list[list[int]]:
        return micro_batches(rollout.prompt_mask.sum(-1).tolist(), rollout.lengths.tolist(),
                             self.micro_batch_size, self.micro_batch_tokens)

    def stats(self, model, rollout: Rollout, with_entropy: bool | str = True,
              entropy_at_one: bool = False,
              support: torch.Tensor | int | None = None) -> TokenStats:
        """One forward pass of ``model`` (gradients flow) over a whole micro-batch."""
        with precision(self.model, self.bf16):
            return completion_logprobs(
                model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                rollout.completion_mask, rollout.temperatures, with_entropy=with_entropy,
                entropy_at_one=entropy_at_one, chunk_size=self.logits_chunk_size,
                support=support)

    def policy(self, rollout: Rollout) -> torch.Tensor:
        """The policy's log-probs of a rollout's completion tokens ``[N, Lc]`` (no gradient)."""
        return self._each(self.model, rollout, "logps")

    def entropy(self, rollout: Rollout) -> torch.Tensor:
        """The policy's entropy at each completion position ``[N, Lc]`` (no gradient)."""
        return self._each(self.model, rollout, "entropy")

    def reference(self, rollout: Rollout) -> torch.Tensor:
        """The frozen reference's log-probs (the base model with LoRA adapters off)."""
        if self.ref_model is None:
            with lora.adapters_disabled(self.model):
                return self._each(self.model, rollout, "logps")
        return self._each(self.ref_model, rollout, "logps")

    @torch.no_grad()
    def top_k(self, rollout: Rollout, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids ``[N, Lc, K]`` and log-probs of the policy's top ``k`` tokens (``K = min(k,
        vocab)``) at each completion position, 0 at padding, micro-batch by micro-batch."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        width = min(k, vocab)
        ids = torch.zeros(rollout.completion_ids.shape + (width,), dtype=torch.long,
                          device=rollout.completion_ids.device)
        logps = torch.zeros(ids.shape, device=ids.device)
        for rows in self.micro_batches(rollout):
            top = self.stats(self.model, rollout.select(rows).trimmed(), with_entropy=False,
                             support=k).support
            index = torch.tensor(rows, device=ids.device)
            ids[index, :top.shape[1]] = top[..., :width].round().long()
            logps[index, :top.shape[1]] = top[..., width:]
        return ids, logps

    @torch.no_grad()
    def _each(self, model, rollout: Rollout, what: str) -> torch.Tensor:
        """``what`` (``logps`` or ``entropy``) ``[N, Lc]``, 0 at padding, micro-batch by
        micro-batch."""
        out = torch.zeros(rollout.completion_ids.shape, device=rollout.completion_ids.device)
        for rows in self.micro_batches(rollout):
            stats = self.stats(model, rollout.select(rows).trimmed(),
                               with_entropy=what == "entropy")
            values = getattr(stats, what)
            out[torch.tensor(rows, device=out.device), :values.shape[1]] = values
        return out

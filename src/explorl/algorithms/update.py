"""The policy update: one optimizer step over this process's rows of a batch, in micro-batches.

The loss of each micro-batch is the algorithm's per-token policy loss (revision rows: HeRL's
shaped loss instead; with ``top_entropy_quantile`` only on the batch's highest-entropy tokens),
plus ``beta`` times the KL to the reference, minus ``entropy_coef`` times the entropy,
aggregated with whole-batch counts: micro-batches and processes add up to exactly
the loss of the whole batch. A step whose loss or gradient is not finite is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from explorl.algorithms.base import Algorithm
from explorl.algorithms.losses import Normalizer, aggregate, entropy_threshold, kl_estimate
from explorl.batch import TrainBatch, UpdateBatch
from explorl.models import lora
from explorl.models.policy import TokenStats, completion_logprobs, precision
from explorl.rollout.engine import Rollout

log = logging.getLogger("explorl")
SUMMED = ("loss", "kl", "entropy", "entropy_t1", "clip_fraction", "loss/on_policy",
          "loss/off_policy")

RevisionLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


class PolicyUpdate:
    """Owns what the update needs besides the algorithm: the model (``model`` to read,
    ``train_model`` the prepared one to train through), the frozen reference (``ref_model``, or
    the LoRA base), the optimizer and the process group ``dist``. ``revision_loss(logps,
    behaviour_logps, advantages)`` is the per-token loss of off-policy (revision) rows."""

    def __init__(self, cfg, model, train_model, ref_model, optimizer, dist,
                 algorithm: Algorithm, revision_loss: RevisionLoss | None = None,
                 entropy_at_one: bool = False):
        self.cfg, self.model, self.train_model, self.ref_model = cfg, model, train_model, ref_model
        self.optimizer, self.dist, self.algorithm = optimizer, dist, algorithm
        self.revision_loss, self.entropy_at_one = revision_loss, entropy_at_one
        self.entropy_coef = cfg.entropy_coef  # adapted between steps by use_adaptive_entropy
        self.before_apply: Callable[[], None] = lambda: None  # called before weights change

    # --- before the update: this process's rows and their log-probs ----------------------------
    def prepare(self, batch: TrainBatch, advantages: torch.Tensor,
                loss_mask: torch.Tensor) -> UpdateBatch:
        """This process's balanced share of the batch's rows, with the old log-probs (when the
        policy changes between iterations) and the reference's (when ``beta > 0``)."""
        rows = self.dist.share(len(batch))
        rollout = batch.rollout.select(rows)
        norm = Normalizer(len(batch), int(loss_mask.sum()), self.cfg.max_completion_length)

        def own(t):
            return None if t is None else t[rows]

        old = own(batch.old_logps) if batch.old_logps is not None else self._old_logps(rollout)
        ref = self.ref_logprobs(rollout) if self.cfg.beta > 0 else None
        return UpdateBatch(rollout, advantages[rows], loss_mask[rows], old, ref,
                           own(batch.revision), own(batch.behaviour_logps), norm,
                           int(batch.rollout.completion_mask.sum()),
                           self._high_entropy(rollout, loss_mask[rows]))

    def logprobs(self, rollout: Rollout) -> torch.Tensor:
        """The policy's log-probs of a rollout's completion tokens (no gradient)."""
        return self._logps(self.model, rollout)

    def _high_entropy(self, rollout: Rollout, mask: torch.Tensor) -> torch.Tensor | None:
        """Trained tokens at or above the whole batch's entropy quantile (all processes'),
        under the policy that sampled them; None when every token carries the loss."""
        if self.cfg.top_entropy_quantile >= 1:
            return None
        entropy = self._logps(self.model, rollout, "entropy")
        trained = entropy[mask.bool()].cpu()
        threshold = entropy_threshold(torch.cat(self.dist.gather(trained)),
                                      self.cfg.top_entropy_quantile)
        return mask.bool() & (entropy >= threshold)

    def _old_logps(self, rollout: Rollout) -> torch.Tensor | None:
        # With one optimizer step per batch the ratio is exactly 1: nothing to store.
        steps = self.algorithm.epochs * len(self.algorithm.mini_batches(len(rollout), 0, 0))
        return self.logprobs(rollout) if steps > 1 else None

    def ref_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """The frozen reference's log-probs (the base model with LoRA adapters off)."""
        if self.cfg.lora_r:
            with lora.adapters_disabled(self.model):
                return self._logps(self.model, rollout)
        return self._logps(self.ref_model, rollout)

    @torch.no_grad()
    def _logps(self, model, rollout: Rollout, what: str = "logps") -> torch.Tensor:
        """Log-probs (or ``what="entropy"``: entropies) ``[N, Lc]``, 0 at padding, in the
        update's micro-batches."""
        out = torch.zeros(rollout.completion_ids.shape, device=rollout.completion_ids.device)
        for rows in self._micro_batches(rollout):
            stats = self._stats(model, rollout.select(rows).trimmed(),
                                with_entropy=what == "entropy")
            values = getattr(stats, what)
            out[torch.tensor(rows, device=out.device), :values.shape[1]] = values
        return out

    def _micro_batches(self, rollout: Rollout) -> list[list[int]]:
        return micro_batches(rollout.prompt_mask.sum(-1).tolist(), rollout.lengths.tolist(),
                             self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)

    def _stats(self, model, rollout: Rollout, with_entropy: bool | str = True,
               entropy_at_one: bool = False) -> TokenStats:
        with precision(self.model, self.cfg.bf16):
            return completion_logprobs(
                model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                rollout.completion_mask, rollout.temperatures, with_entropy=with_entropy,
                entropy_at_one=entropy_at_one, chunk_size=self.cfg.logits_chunk_size)

    # --- the update ----------------------------------------------------------------------------
    def step(self, batch: UpdateBatch, lr: float, step: int = 0) -> dict:
        """The algorithm's ``epochs`` passes over its mini-batches of the batch, one optimizer
        step each, at learning rate ``lr``; the metrics of the last."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for epoch in range(self.algorithm.epochs):
            for rows in self.algorithm.mini_batches(len(batch), step, epoch):
                mini = batch if isinstance(rows, slice) else batch.select(rows)
                metrics = self._one_step(mini)
                metrics.update(self.algorithm.after_policy_step(mini, rows))
        return metrics

    def _one_step(self, batch: UpdateBatch) -> dict:
        chunks = self._micro_batches(batch.rollout)
        # Forward and backward passes are collective under DDP/FSDP: every process makes as many
        # as the one with the most chunks, the others adding zero-weight passes over a row.
        fillers = [[0]] * (self.dist.max(len(chunks)) - len(chunks))
        sums = dict.fromkeys(SUMMED, 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        for i, rows in enumerate(chunks + fillers):
            loss, parts = self._chunk_loss(batch, rows, filler=i >= len(chunks))
            self.dist.backward(loss, last=i == len(chunks) + len(fillers) - 1)
            for key, value in parts.items():
                sums[key] += value
        sums = dict(zip(sums, self.dist.sum(*sums.values())))  # the whole batch's
        self.before_apply()
        # One bad batch must not poison the weights or Adam's moments.
        grad_norm, skipped = self.dist.step(self.optimizer, self.cfg.max_grad_norm,
                                            math.isfinite(sums["loss"]))
        if skipped:
            log.warning("non-finite loss or gradient: update skipped")
        return self._metrics(sums, batch, grad_norm, skipped)

    def _chunk_loss(self, batch: UpdateBatch, rows: list[int],
                    filler: bool) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch and its parts (sums over its tokens)."""
        cfg = self.cfg
        rollout = batch.rollout.select(rows).trimmed()  # no column that is padding everywhere
        width = rollout.completion_ids.shape[1]

        def own(t: torch.Tensor) -> torch.Tensor:
            return t[rows][:, :width]

        mask, full = own(batch.loss_mask), rollout.completion_mask
        if filler:
            mask, full = torch.zeros_like(mask), torch.zeros_like(full)
        stats = self._stats(self.train_model, rollout,
                            with_entropy="grad" if self.entropy_coef else True,
                            entropy_at_one=self.entropy_at_one)
        logps, advantages = stats.logps, own(batch.advantages)
        old = logps.detach() if batch.old_logps is None else own(batch.old_logps)
        per_token, clipped = self.algorithm.policy_loss(logps, old, advantages, mask)
        revised = None  # [n, 1] bool: rows holding a revision
        if batch.revision is not None and batch.revision[rows].any():
            revised = batch.revision[rows].unsqueeze(-1)
            if batch.behaviour_logps is not None:
                old = torch.where(revised, own(batch.behaviour_logps), old)
            per_token = torch.where(revised, self.revision_loss(logps, old, advantages),
                                    per_token)
            clipped = clipped & ~revised
        if batch.policy_mask is not None:  # top_entropy_quantile: the other tokens carry none
            per_token = per_token * own(batch.policy_mask)
        parts = {}
        if batch.ref_logps is not None:
            kl = kl_estimate(logps, own(batch.ref_logps), cfg.kl_estimator)
            per_token = per_token + cfg.beta * kl
            parts["kl"] = float((kl.detach() * mask).sum())
        if self.entropy_coef:
            per_token = per_token - self.entropy_coef * stats.entropy
        loss = aggregate(per_token, mask, cfg.loss_type, batch.norm)
        parts["loss"] = float(loss.detach())
        if batch.revision is not None:
            off_policy = mask * revised.long() if revised is not None else torch.zeros_like(mask)
            parts["loss/off_policy"] = float(aggregate(per_token.detach(), off_policy,
                                                       cfg.loss_type, batch.norm))
            parts["loss/on_policy"] = float(aggregate(per_token.detach(), mask - off_policy,
                                                      cfg.loss_type, batch.norm))
        parts["entropy"] = float((stats.entropy.detach() * full).sum())
        if stats.entropy_t1 is not None:
            parts["entropy_t1"] = float((stats.entropy_t1.detach() * full).sum())
        parts["clip_fraction"] = float((clipped.float() * mask).sum())
        return loss, parts

    def _metrics(self, sums: dict, batch: UpdateBatch, grad_norm: float, skipped: bool) -> dict:
        tokens = max(batch.norm.num_tokens, 1)
        generated = max(batch.generated_tokens, 1)
        out = {"loss": sums["loss"], "kl": sums["kl"] / tokens,
               "entropy": sums["entropy"] / generated,
               "clip_fraction": sums["clip_fraction"] / tokens, "grad_norm": float(grad_norm),
               "update_skipped": int(skipped)}
        if self.entropy_at_one:
            out["entropy_t1"] = sums["entropy_t1"] / generated
        if batch.policy_mask is not None:
            out["top_entropy/kept"] = float(batch.policy_mask.sum() / batch.loss_mask.sum().clamp(
                min=1))
        if self.cfg.use_adaptive_entropy:
            out["entropy_coef"] = self.entropy_coef
        if batch.revision is not None:
            out["loss/on_policy"] = sums["loss/on_policy"]
            out["loss/off_policy"] = sums["loss/off_policy"]
        return out

"""The policy update: optimizer steps over this process's rows of a batch, in micro-batches.

The loss of a micro-batch is the sum of the named loss terms (:mod:`explorl.algorithms.terms`:
the algorithm's policy gradient, KL to the reference, the entropy bonus, and whatever a method
adds, HeRL's revision term), each on the rows the batch marks for it, aggregated with
whole-batch counts: micro-batches and processes add up to exactly the loss of the whole batch.
The algorithm decides the passes (``epochs``) and mini-batches, one optimizer step each;
metrics are those of every step together. A step whose loss or gradient is not finite is
skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from explorl.algorithms.base import Algorithm
from explorl.algorithms.losses import aggregate, entropy_threshold
from explorl.algorithms.terms import LossTerm, TermInputs
from explorl.batch import Advantages, Normalizer, Rollout, TrainBatch, UpdateBatch
from explorl.models.logprobs import LogProbs

log = logging.getLogger("explorl")


class PolicyUpdate:
    """Trains ``train_model`` (the prepared model: DDP-wrapped, sharded, or the model itself)
    with ``optimizer`` on the sum of ``terms``; ``logprobs`` gives the log-probs the terms
    compare against; ``dist`` is the process group; ``before_apply`` is called just before the
    weights first change (from then on a step cannot be abandoned)."""

    def __init__(self, cfg, train_model, optimizer, dist, algorithm: Algorithm,
                 terms: list[LossTerm], logprobs: LogProbs,
                 before_apply: Callable[[], None] = lambda: None):
        self.cfg, self.train_model, self.optimizer, self.dist = cfg, train_model, optimizer, dist
        self.algorithm, self.terms, self.logprobs = algorithm, terms, logprobs
        self.before_apply = before_apply

    def needs(self, what: str) -> bool:
        return any(what in term.needs for term in self.terms)

    # --- before the update: this process's rows and what the terms compare against ----------
    def prepare(self, batch: TrainBatch, estimate: Advantages,
                loss_mask: torch.Tensor) -> UpdateBatch:
        """This process's balanced share of the batch's rows, with the old log-probs (when the
        policy changes between optimizer steps) and the reference's (for a KL term)."""
        rows = self.dist.share(len(batch))
        rollout = batch.rollout.select(rows)

        def own(t):
            return None if t is None else t[rows]

        old = own(estimate.old_logps) if estimate.old_logps is not None \
            else self._old_logps(rollout)
        ref = self.logprobs.reference(rollout) if self.needs("ref_logps") else None
        norm = Normalizer(len(batch), int(loss_mask.sum()), self.cfg.max_completion_length,
                          {k: int(loss_mask[v].sum()) for k, v in batch.rows.items()})
        return UpdateBatch(
            rollout, estimate.advantages[rows], loss_mask[rows], norm,
            int(batch.rollout.completion_mask.sum()), old_logps=old, ref_logps=ref,
            behaviour_logps=own(batch.behaviour_logps), values=own(estimate.values),
            returns=own(estimate.returns), rows={k: v[rows] for k, v in batch.rows.items()},
            policy_mask=self._high_entropy(rollout, loss_mask[rows]),
            teacher_ids=own(batch.teacher_ids), teacher_logps=own(batch.teacher_logps))

    def _old_logps(self, rollout: Rollout) -> torch.Tensor | None:
        # With one optimizer step per batch the ratio is exactly 1: nothing to store.
        steps = self.algorithm.epochs * len(self.algorithm.mini_batches(len(rollout), 0, 0))
        return self.logprobs.policy(rollout) if steps > 1 else None

    def _high_entropy(self, rollout: Rollout, mask: torch.Tensor) -> torch.Tensor | None:
        """Trained tokens at or above the whole batch's entropy quantile (all processes'),
        under the policy that sampled them; None when every token carries the loss."""
        quantile = self.cfg.entropy.top_quantile
        if quantile >= 1:
            return None
        entropy = self.logprobs.entropy(rollout)
        trained = entropy[mask.bool()].cpu()
        threshold = entropy_threshold(torch.cat(self.dist.gather(trained)), quantile)
        return mask.bool() & (entropy >= threshold)

    # --- the update --------------------------------------------------------------------------
    def step(self, batch: UpdateBatch, lr: float, step: int = 0,
             coefficients: dict[str, float] | None = None) -> dict:
        """The algorithm's ``epochs`` passes over its mini-batches of the batch, one optimizer
        step each, at learning rate ``lr``; ``coefficients`` override terms' own for this
        update (an adapted entropy bonus). Returns the metrics of all the steps together."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        steps = []
        for epoch in range(self.algorithm.epochs):
            for rows in self.algorithm.mini_batches(len(batch), step, epoch):
                mini = batch if isinstance(rows, slice) else batch.select(rows)
                sums = self._optimizer_step(mini, coefficients or {})
                steps.append((sums, self.algorithm.after_policy_step(mini)))
        return update_metrics(steps, top_entropy=batch.policy_mask is not None and
                              float(batch.policy_mask.sum() / batch.loss_mask.sum().clamp(min=1)))

    def _optimizer_step(self, batch: UpdateBatch, coefficients: dict[str, float]) -> dict:
        """One optimizer step over ``batch`` in micro-batches; the whole batch's sums."""
        chunks = self.logprobs.micro_batches(batch.rollout)
        # Forward and backward passes are collective under DDP/FSDP: every process makes as many
        # as the one with the most chunks, the others adding zero-weight passes over a row.
        fillers = [[0]] * (self.dist.max(len(chunks)) - len(chunks))
        sums: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for i, rows in enumerate(chunks + fillers):
            loss, parts = self._chunk_loss(batch.chunk(rows), coefficients,
                                           filler=i >= len(chunks))
            self.dist.backward(loss, last=i == len(chunks) + len(fillers) - 1)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        keys = sorted(sums)  # the same on every process: the terms decide them
        sums = dict(zip(keys, self.dist.sum(*(sums[k] for k in keys))))  # the whole batch's
        self.before_apply()
        # One bad batch must not poison the weights or Adam's moments.
        grad_norm, skipped = self.dist.step(self.optimizer, self.cfg.max_grad_norm,
                                            math.isfinite(sums["loss"]))
        if skipped:
            log.warning("non-finite loss or gradient: update skipped")
        return {**sums, "grad_norm": float(grad_norm), "update_skipped": int(skipped),
                "tokens": batch.norm.num_tokens, "generated": batch.generated_tokens}

    def _chunk_loss(self, batch: UpdateBatch, coefficients: dict[str, float],
                    filler: bool) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch (the sum of the terms) and its parts (sums over its
        tokens; each term's share of the loss as ``loss/<name>``)."""
        mask, full = batch.loss_mask, batch.rollout.completion_mask
        if filler:
            mask, full = torch.zeros_like(mask), torch.zeros_like(full)
        active = [(term, coef) for term in self.terms
                  if (coef := coefficients.get(term.name, term.coef))]
        tempered = batch.rollout.temperatures != 1
        needs = {need for term, _ in active for need in term.needs}
        stats = self.logprobs.stats(
            self.train_model, batch.rollout,
            with_entropy="grad" if "entropy_grad" in needs else True,
            entropy_at_one=bool(tempered.any()),
            support=batch.teacher_ids if "support" in needs else None)
        x = TermInputs(stats.logps, stats.entropy, batch, mask, stats.support)
        total, own, parts = None, 0.0, {}
        clipped = torch.zeros_like(mask, dtype=torch.bool)
        for term, coef in active:
            out = term(x, coef)
            rows = batch.rows_of(term.name)
            value = out.per_token if rows is None else torch.where(rows, out.per_token, 0.0)
            if getattr(term, "own_mean", False):  # a mean over its own rows' tokens
                share = (value * mask).sum() / max(batch.norm.row_tokens.get(term.name, 0), 1)
                own = own + share
            else:
                total = value if total is None else total + value
                share = aggregate(value, mask, self.cfg.loss_type, batch.norm)
            parts[f"loss/{term.name}"] = float(share.detach())
            parts.update(gradient_weight(term.name, share, stats.logps, stats.support))
            if out.clipped is not None:
                clipped |= out.clipped if rows is None else out.clipped & rows
            parts.update({k: float(v) for k, v in out.sums.items()})
        loss = aggregate(total, mask, self.cfg.loss_type, batch.norm) + own
        untempered = stats.entropy_t1 if stats.entropy_t1 is not None else stats.entropy
        return loss, {**parts, "loss": float(loss.detach()),
                      "entropy": float((stats.entropy.detach() * full).sum()),
                      "entropy_t1": float((untempered.detach() * full).sum()),
                      "tempered_tokens": float((tempered.unsqueeze(-1) * full).sum()),
                      "clip_fraction": float((clipped.float() * mask).sum())}


def gradient_weight(name: str, share: torch.Tensor, *inputs: torch.Tensor | None
                    ) -> dict[str, float]:
    """How hard a term's share of the loss pushes log-probs up and down: ``grad/<name>/up`` =
    the sum of ``max(0, -dL/dlog p)`` over the log-probs it reads (the sampled tokens', a
    teacher's support), ``grad/<name>/down`` of ``max(0, dL/dlog p)``; none for a term that
    reads none of them (the entropy bonus)."""
    inputs = tuple(t for t in inputs if t is not None and t.requires_grad)
    if not (share.requires_grad and inputs):
        return {}
    grads = [g for g in torch.autograd.grad(share, inputs, retain_graph=True, allow_unused=True)
             if g is not None]
    if not grads:
        return {}
    return {f"grad/{name}/up": sum(float((-g).clamp(min=0).sum()) for g in grads),
            f"grad/{name}/down": sum(float(g.clamp(min=0).sum()) for g in grads)}


def update_metrics(steps: list[tuple[dict, dict]], top_entropy: float | bool = False) -> dict:
    """The metrics of an update's optimizer steps together: token quantities (KL, entropy,
    clip fraction) over every step's tokens, the engine/trainer mismatch over the tokens whose
    engine log-probs are known; losses, gradient norms and the algorithm's own
    numbers (a critic's) averaged over the steps, and so are each term's loss and gradient
    weights; skipped steps counted. ``top_entropy``: the
    share of trained tokens that carried the policy loss, when not all did."""
    def total(key: str) -> float:
        return sum(sums.get(key, 0.0) for sums, _ in steps)

    tokens = sum(max(s["tokens"], 1) for s, _ in steps)
    generated = sum(max(s["generated"], 1) for s, _ in steps)
    n = len(steps)
    out = {"loss": total("loss") / n, "kl": total("kl") / tokens,
           "entropy": total("entropy") / generated,
           "clip_fraction": total("clip_fraction") / tokens, "grad_norm": total("grad_norm") / n,
           "update_skipped": int(total("update_skipped"))}
    if total("tempered_tokens"):  # some row was sampled at another temperature than 1
        out["entropy_t1"] = total("entropy_t1") / generated
    out.update({k: total(k) / n for k in steps[0][0] if k.startswith(("loss/", "grad/"))})
    out.update({k: total(k) / tokens for k in steps[0][0] if k.startswith("distill/")})
    if total("mismatch/tokens"):  # over the tokens whose engine log-probs are known
        out.update({k: total(k) / total("mismatch/tokens") for k in ("mismatch/kl",
                                                                      "mismatch/capped")})
    out.update({k: sum(extra[k] for _, extra in steps) / n for k in steps[0][1]})
    if top_entropy is not False:
        out["top_entropy/kept"] = top_entropy
    return out

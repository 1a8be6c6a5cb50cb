"""Loss terms: the update's loss is the sum of named terms over the tokens each one covers.

A term is a small object with a ``name``, a default coefficient ``coef`` and ``needs`` (what
the update must prepare for it: ``ref_logps``, ``entropy_grad``, ``support``); with
``own_mean`` its share is a mean over its own rows' tokens rather than aggregated with the
batch's counts (``loss_type``); calling it on
:class:`TermInputs` with this step's coefficient gives a :class:`TermOutput`, its signed and
weighted per-token contribution. Which rows a term covers is data on the batch
(``UpdateBatch.rows[name]``; no key: every row), not a branch in the update, so a method adds
a term (HeRL's revision term, :mod:`explorl.exploration.hindsight`) without touching
:mod:`explorl.algorithms.update`. The math stays in :mod:`explorl.algorithms.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from explorl.algorithms.losses import (
    kl_estimate,
    mismatch_kl,
    mismatch_weights,
    support_divergence,
)
from explorl.batch import UpdateBatch


@dataclass
class TermInputs:
    """What a term reads for one micro-batch."""

    logps: torch.Tensor  # [n, L] the policy's log-probs at the sampling temperature, with grad
    entropy: torch.Tensor | None  # [n, L] (with grad when a term needs ``entropy_grad``)
    batch: UpdateBatch  # the micro-batch: advantages, old/ref/behaviour log-probs, rows
    mask: torch.Tensor  # [n, L] the tokens that carry the loss (none in a filler pass)
    support: torch.Tensor | None = None  # [n, L, K] log-probs at the teacher's tokens, with
    # grad, when a term needs ``support``


@dataclass
class TermOutput:
    per_token: torch.Tensor  # [n, L] the term's contribution to the loss, signed and weighted
    clipped: torch.Tensor | None = None  # [n, L] bool: where clipping bound it
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # token sums to report


class LossTerm(Protocol):
    name: str
    coef: float
    needs: frozenset[str]

    def __call__(self, x: TermInputs, coef: float) -> TermOutput: ...


PolicyLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                      tuple[torch.Tensor, torch.Tensor]]
"""(logps, old_logps, advantages, mask) -> (per-token loss, where clipping bound it)."""


@dataclass(frozen=True)
class MismatchCorrection:
    """The engine/trainer mismatch correction's ``mode`` (``token|sequence`` x
    ``truncate|mask``) and ``cap`` (:func:`~explorl.algorithms.losses.mismatch_weights`)."""

    mode: str = "sequence_mask"
    cap: float = 3.0


class PolicyGradient:
    """The algorithm's policy-gradient surrogate (clip, dual clip, GSPO, CISPO, PPO's clip) on
    the rows marked ``policy`` (all when unmarked); with ``top_entropy_quantile`` only on the
    tokens ``policy_mask`` keeps. The ratio's denominator is the sampling policy's log-probs
    under the trainer, or the current ones detached when one optimizer step makes the ratio
    exactly 1. With a ``correction`` and a rollout that carries the engine's sampling
    log-probs, each token's loss is weighted by the trainer/engine importance ratio, and the
    mismatch is reported (``mismatch/kl``, ``mismatch/capped``)."""

    name, coef, needs = "policy", 1.0, frozenset()

    def __init__(self, loss: PolicyLoss, correction: MismatchCorrection | None = None):
        self.loss = loss  # the algorithm's ``policy_loss``
        self.correction = correction

    def __call__(self, x: TermInputs, coef: float) -> TermOutput:
        b = x.batch
        old = x.logps.detach() if b.old_logps is None else b.old_logps
        per_token, clipped = self.loss(x.logps, old, b.advantages, x.mask)
        if b.policy_mask is not None:  # the other tokens carry none
            per_token = per_token * b.policy_mask
        sampling = b.rollout.sampling_logps
        if self.correction is None or sampling is None:
            return TermOutput(per_token, clipped)
        # ``old`` is the trainer's at sampling time: the engine sampled from the same weights
        weights, capped = mismatch_weights(old, sampling, x.mask, self.correction.mode,
                                           self.correction.cap)
        known = x.mask * ~sampling.isnan()
        if b.rows_of(self.name) is not None:  # measured on the rows this term trains
            known = known * b.rows_of(self.name)
        sums = {"mismatch/kl": (mismatch_kl(old, sampling) * known).sum(),
                "mismatch/capped": (capped * known).sum(), "mismatch/tokens": known.sum()}
        return TermOutput(per_token * weights, clipped, sums)


class KLPenalty:
    """``beta * KL(pi || ref)`` per token (k1 or k3 estimate), on every trained token."""

    name, needs = "kl", frozenset({"ref_logps"})

    def __init__(self, beta: float, estimator: str):
        self.coef, self.estimator = beta, estimator

    def __call__(self, x: TermInputs, coef: float) -> TermOutput:
        kl = kl_estimate(x.logps, x.batch.ref_logps, self.estimator)
        return TermOutput(coef * kl, sums={"kl": (kl.detach() * x.mask).sum()})


class EntropyBonus:
    """``-coef * H`` per token: a bonus for spread-out distributions (its coefficient may be
    adapted between steps, :mod:`explorl.exploration.entropy_bonus`)."""

    name, needs = "entropy", frozenset({"entropy_grad"})

    def __init__(self, coef: float):
        self.coef = coef

    def __call__(self, x: TermInputs, coef: float) -> TermOutput:
        return TermOutput(-coef * x.entropy)


class SupervisedTerm:
    """``-coef * log pi(y_t)`` on the rows marked ``sft``, a mean over their tokens (``own_mean``:
    whatever their share of the batch, the term weighs ``coef`` times a mean negative
    log-likelihood): imitation of chosen samples (accepted revisions under the original prompt)
    beside the RL loss, as ExPO, ReLIFT and CHORD add one."""

    name, needs, own_mean = "sft", frozenset(), True

    def __init__(self, coef: float):
        self.coef = coef

    def __call__(self, x: TermInputs, coef: float) -> TermOutput:
        return TermOutput(-coef * x.logps)


class DistillationTerm:
    """``coef * D(student, teacher)`` per token on the rows marked ``distill``: the policy's
    distribution at each position against a teacher's top-K log-probs
    (:func:`~explorl.algorithms.losses.support_divergence`, ``jsd`` or ``reverse_kl``)."""

    name, needs = "distill", frozenset({"support"})

    def __init__(self, coef: float, divergence: str = "jsd", beta: float = 0.5):
        self.coef, self.divergence, self.beta = coef, divergence, beta

    def __call__(self, x: TermInputs, coef: float) -> TermOutput:
        b = x.batch
        valid = x.mask.bool()
        if b.rows_of(self.name) is not None:
            valid = valid & b.rows_of(self.name)
        # elsewhere both sides are a uniform stand-in: finite, and no gradient
        uniform = torch.full_like(b.teacher_logps, -math.log(b.teacher_logps.shape[-1] + 1))
        student = torch.where(valid.unsqueeze(-1), x.support, uniform)
        teacher = torch.where(valid.unsqueeze(-1), b.teacher_logps, uniform)
        div = support_divergence(student, teacher, self.divergence, self.beta)
        return TermOutput(coef * torch.where(valid, div, 0.0),
                          sums={"distill/divergence": (div.detach() * valid).sum()})

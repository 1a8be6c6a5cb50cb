"""Hindsight self-distillation: a teacher that reads the feedback re-scores the student's own
failed sample, token by token (SDPO, arXiv 2601.20802, and its follow-ups).

For each failed sample y of a prompt x, the teacher is the guide (the policy, its frozen initial
weights or an EMA of it, :mod:`explorl.exploration.guide`) given the hindsight prompt built from
y itself: its met and unmet criteria, from the rubric or a judge. At each position of y the
teacher's top-K tokens and their log-probs become the target of the student, the policy given
x, through the ``distill`` loss term (:class:`explorl.algorithms.terms.DistillationTerm`). No
guided sample is trained and no importance ratio is needed; the all-fail groups, which carry no
policy gradient, get a signal. With ``herl.blank_hindsight`` the teacher sees empty lists: the
control.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from explorl.batch import ScoredBatch, TrainBatch
from explorl.exploration.hindsight import Hindsight
from explorl.models.logprobs import LogProbs
from explorl.rollout.engine import left_pad


def failed_samples(batch: ScoredBatch, train_batch: TrainBatch, threshold: float) -> list[int]:
    """Rows of the batch below ``threshold`` with a known reward and grades, not overwritten by
    a revision."""
    rewards, grades = batch.rewards.met(), batch.rewards.grades or [None] * len(batch)
    revision = train_batch.rows.get("revision")
    return [i for i in range(len(batch)) if grades[i] is not None and not rewards[i].isnan()
            and float(rewards[i]) < threshold and not (revision is not None and revision[i])]


def distillation_targets(hindsight: Hindsight, batch: ScoredBatch, train_batch: TrainBatch,
                         teacher: LogProbs) -> tuple[TrainBatch, dict]:
    """``train_batch`` with the teacher's top-K tokens and log-probs at every position of each
    failed sample, and those rows marked ``distill``."""
    failed = failed_samples(batch, train_batch, hindsight.cfg.threshold)
    device = train_batch.rollout.group_ids.device
    distill = torch.zeros(len(train_batch), dtype=torch.bool, device=device)
    rows = {**train_batch.rows, "distill": distill}
    if not failed:
        return replace(train_batch, rows=rows), {"herl/distilled": 0, "herl/teacher_tokens": 0}
    groups = batch.rollout.group_ids
    prompts = [hindsight.prompt(batch.rows[int(groups[i])], batch.texts[i],
                                batch.rewards.grades[i].verdicts) for i in failed]
    ids, mask = left_pad(prompts, hindsight.codec.tokenizer.pad_token_id)
    student = batch.rollout.select(failed).trimmed()
    under_hindsight = replace(student, prompt_ids=ids.to(device), prompt_mask=mask.to(device))
    top_ids, top_logps = teacher.top_k(under_hindsight, hindsight.cfg.distill_top_k)
    shape = train_batch.rollout.completion_ids.shape + (top_ids.shape[-1],)
    teacher_ids = torch.zeros(shape, dtype=torch.long, device=device)
    teacher_logps = torch.zeros(shape, device=device)
    index, width = torch.tensor(failed, device=device), top_ids.shape[1]
    teacher_ids[index, :width], teacher_logps[index, :width] = top_ids, top_logps
    distill[index] = True
    # the teacher's forward passes, in tokens: its compute, beside the tokens it never samples
    scored = int(under_hindsight.prompt_mask.sum() + under_hindsight.completion_mask.sum())
    return replace(train_batch, rows=rows, teacher_ids=teacher_ids,
                   teacher_logps=teacher_logps), {"herl/distilled": len(failed),
                                                  "herl/teacher_tokens": scored}

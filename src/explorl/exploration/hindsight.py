"""HeRL: hindsight-experience-guided exploration (Experience is the Best Teacher, 2025).

When no sample of a group meets the whole rubric, the policy is shown its best failed attempt
with the criteria it met and missed, and asked to revise. Revisions are graded against the
original rubric; a draft earns ``alpha * (best revision reward - its reward)`` as a bonus; the
best revisions that beat the group overwrite ``replace_top_n`` random slots of the group,
keeping the group id, so they are normalised with the on-policy samples. Their tokens get the
shaped loss ``-A * rho / (rho + gamma)`` (:func:`shaped_surrogate`), a loss term of its own
(:class:`RevisionSurrogate`) on the rows the batch marks ``revision``.

Everything HeRL is lives here: the pure steps, the hindsight prompt (also used at test time by
:mod:`explorl.improve`), the revision term, and :class:`Hindsight`, whose :meth:`~Hindsight.plan`
says what to revise and whose :meth:`~Hindsight.merge` turns the graded revisions into the batch
to train on; the trainer collects the revisions in between.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from explorl.algorithms.terms import DistillationTerm, SupervisedTerm, TermInputs, TermOutput
from explorl.batch import Advantages, Rollout, ScoredBatch, TrainBatch
from explorl.data import rubric_task
from explorl.exploration.revisions import (
    RevisionBuffer,
    Sample,
    revision_metrics,
    sample_at,
    splice,
)
from explorl.rewards.rubric import parse_rubric

DEFAULT_TEMPLATE = (
    "You are revising your own answer. Keep what already meets the criteria, fix what does "
    "not, and add no new facts.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Criteria met:\n{met}\n\n"
    "Criteria not met:\n{unmet}\n\n"
    "Your previous answer:\n{draft}\n\n"
    "Return only the revised answer."
)
"""The hindsight prompt (after the reference's wording). Placeholders: ``{instruction}``,
``{draft}``, ``{met}``/``{unmet}`` (numbered lines) and ``{met_list}``/``{unmet_list}`` (one line,
comma-separated)."""



def template_for(template: str | None, dataset) -> str:
    """``template``, else the built-in tasks' own (the shipped models were warm-started from
    a model trained on it), else :data:`DEFAULT_TEMPLATE`."""
    if template:
        return template
    return rubric_task.REVISE_TEMPLATE if str(dataset) in {*rubric_task.VARIANTS, "calculator"} \
        else DEFAULT_TEMPLATE


LogProbs = Callable[[Rollout], torch.Tensor]  # the policy's log-probs of a rollout's tokens
Estimate = Callable[[TrainBatch, torch.Tensor], Advantages]  # an algorithm's advantages


# --- the steps, pure ----------------------------------------------------------------------------
def failed_groups(rewards: torch.Tensor, group_ids: torch.Tensor, threshold: float) -> list[int]:
    """Groups whose best known reward is below ``threshold`` (no sample met everything).
    A group with no known reward has no draft to revise and is not counted."""
    failed = []
    for g in range(int(group_ids.max()) + 1):
        r = rewards[(group_ids == g) & ~rewards.isnan()]
        if r.numel() and float(r.max()) < threshold:
            failed.append(g)
    return failed


def choose_candidates(rewards: torch.Tensor, num_met: torch.Tensor, group_ids: torch.Tensor,
                      group: int, limit: int) -> list[int]:
    """Rows of ``group`` tied at its best reward, most criteria met first (then row order), at
    most ``limit``."""
    rows = [i for i in torch.nonzero(group_ids == group).flatten().tolist()
            if not torch.isnan(rewards[i])]
    best = max(float(rewards[i]) for i in rows)
    tied = [i for i in rows if float(rewards[i]) == best]
    tied.sort(key=lambda i: (-int(num_met[i]), i))
    return tied[:limit]


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{k}. {s}" for k, s in enumerate(items, 1)) or "(none)"


def render_hindsight(template: str, instruction: str, draft: str, met: list[str],
                     unmet: list[str]) -> str:
    return template.format(instruction=instruction, draft=draft, met=_numbered(met),
                           unmet=_numbered(unmet), met_list=", ".join(met),
                           unmet_list=", ".join(unmet))


def criteria_of(row: dict) -> list:
    rubric = row["rubric"]
    return rubric if rubric and not isinstance(rubric[0], dict) else parse_rubric(rubric, "rubric")


def hindsight_prompt(codec, template: str, row: dict, draft: str, verdicts: list[bool],
                     lists: str = "shown") -> list[int]:
    """Token ids of the revise prompt for ``draft`` of ``row`` (chat template when the tokenizer
    has one). ``lists``: ``shown``, ``blank`` (the control) or ``swapped``."""
    criteria = criteria_of(row)
    met = [c.description for c, v in zip(criteria, verdicts) if v]
    unmet = [c.description for c, v in zip(criteria, verdicts) if not v]
    if lists == "blank":
        met, unmet = [], []
    elif lists == "swapped":
        met, unmet = unmet, met
    prompt = row["prompt"]
    instruction = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    text = render_hindsight(template, instruction, draft, met, unmet)
    if isinstance(prompt, list):
        return codec.encode(prompt[:-1] + [{"role": "user", "content": text}])
    return codec.encode(text)


def draft_bonus(draft_reward: float, revision_rewards: list[float], alpha: float) -> float:
    """``r(y) + alpha * (max_k r(z_k) - r(y))``: rewards drafts that revise well; may be
    negative; breaks ties in all-equal groups. Unknown (NaN) revision rewards are ignored."""
    known = [r for r in revision_rewards if r == r]
    if not known:
        return draft_reward
    return draft_reward + alpha * (max(known) - draft_reward)


def accept(revision_rewards: list[float], draft_rewards: list[float], group_best: float,
           mode: str, top_n: int) -> list[int]:
    """Indices of the revisions that enter the group, best first, at most ``top_n``.

    ``better``: reward strictly above the group's best. ``equal`` (the reference): the strictly
    better ones, else those at least equal. ``draft``: also those strictly above their own draft.
    """
    order = sorted(range(len(revision_rewards)), key=lambda k: -revision_rewards[k])
    order = [k for k in order if revision_rewards[k] == revision_rewards[k]]
    chosen = [k for k in order if revision_rewards[k] > group_best]
    if not chosen and mode == "equal":
        chosen = [k for k in order if revision_rewards[k] >= group_best]
    if mode == "draft":
        chosen += [k for k in order if k not in chosen
                   and revision_rewards[k] > draft_rewards[k]]
    return chosen[:top_n]


def shaped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """Per-token loss of off-policy (revision) tokens, HeRL's ``-A * f(rho)`` with
    ``f(rho) = rho / (rho + gamma)``: no clipping, but the weight of a token the policy finds
    unlikely or already likely stays bounded. At rho = 1 the gradient weight is
    ``gamma / (1 + gamma)^2``; ``gamma <= 0`` gives ``f(rho) = rho``."""
    ratio = torch.exp(logps - old_logps)
    shaped = ratio / (ratio + gamma) if gamma > 0 else ratio
    return -advantages * shaped


def revision_advantages(rewards: torch.Tensor, group_ids: torch.Tensor,
                        revision: torch.Tensor) -> torch.Tensor:
    """``[N]``: each revision's reward minus the mean known reward of its group's on-policy
    samples (0 where the group has none, or the revision's reward is unknown); 0 elsewhere."""
    on_policy = rewards.masked_fill(revision, float("nan"))
    known = ~on_policy.isnan()
    n_groups = int(group_ids.max()) + 1
    sums = rewards.new_zeros(n_groups).index_add_(
        0, group_ids, torch.where(known, on_policy, torch.zeros_like(on_policy)))
    counts = rewards.new_zeros(n_groups).index_add_(0, group_ids, known.to(rewards.dtype))
    centred = rewards - (sums / counts.clamp(min=1))[group_ids]
    ok = revision & (counts[group_ids] > 0) & ~rewards.isnan()
    return torch.where(ok, centred, torch.zeros_like(centred))


class RevisionSurrogate:
    """HeRL's loss term on the rows marked ``revision``: :func:`shaped_surrogate` against the
    log-probs of the policy that wrote the revision (its behaviour log-probs when it was
    written under another prompt than it is trained under); with ``behaviour_one`` against a
    behaviour probability of 1, so the shaping acts on the token's current probability (LUFFY's
    and Critique-GRPO's form)."""

    name, coef, needs = "revision", 1.0, frozenset()

    def __init__(self, gamma: float, behaviour_one: bool = False):
        self.gamma, self.behaviour_one = gamma, behaviour_one

    def __call__(self, x: TermInputs, coef: float) -> TermOutput:
        b = x.batch
        if self.behaviour_one:
            old = torch.zeros_like(x.logps)
        else:
            old = b.behaviour_logps if b.behaviour_logps is not None else \
                x.logps.detach() if b.old_logps is None else b.old_logps
        return TermOutput(coef * shaped_surrogate(x.logps, old, b.advantages, self.gamma))


# --- the step -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """What HeRL will revise in a scored batch: the failed groups, the drafts (rows of the
    batch), and the request that collects their revisions (``rows``, ``prompt_ids``,
    ``counts``, ``temperatures``, ``max_new_tokens``; None when there is nothing to revise)."""

    failed: list[int]
    drafts: list[int]
    request: tuple | None


@dataclass
class _Revisions:
    """Failed groups, their drafts and the graded revisions."""

    failed: list[int]
    drafts: list[int]  # rows of the batch
    batch: ScoredBatch  # the revisions, under their hindsight prompts; group id j = drafts[j]

    def of_group(self, group: int, group_ids: torch.Tensor) -> list[int]:
        """Rows of ``batch`` revising a draft of ``group``."""
        return [k for k, j in enumerate(self.batch.rollout.group_ids.tolist())
                if int(group_ids[self.drafts[j]]) == group]


class Hindsight:
    """HeRL's step on one scored batch: :meth:`plan` the revisions, collect them (the
    trainer), :meth:`merge` them into the batch to train on; :meth:`terms` adds the revision
    term to the loss and :meth:`advantages` the chosen baseline.

    ``cfg`` is the :class:`explorl.config.HeRLConfig`; ``template`` the hindsight prompt;
    ``codec`` encodes it; ``max_new_tokens`` bounds a revision unless ``cfg.max_length`` does.
    ``rng`` chooses the slots revisions overwrite (saved in checkpoints).
    """

    def __init__(self, cfg, codec, template: str, max_new_tokens: int, seed: int):
        self.cfg, self.codec, self.template = cfg, codec, template
        self.max_new_tokens = cfg.max_length or max_new_tokens
        self.lists = "blank" if cfg.blank_hindsight else "shown"
        # the prompts each accepted revision is trained under, one slot each
        self.contexts = ("hindsight", "original") if cfg.context == "both" else (cfg.context,)
        self.rng = random.Random(seed)
        self.buffer = RevisionBuffer(cfg.sft_buffer)

    def prompt(self, row: dict, draft: str, verdicts: list[bool]) -> list[int]:
        return hindsight_prompt(self.codec, self.template, row, draft, verdicts, self.lists)

    def terms(self) -> list:
        """The revision term and the supervised term (``teach`` revise or both, unless
        ``revision_loss=none``, when ``sft_coef`` is set) and the self-distillation term
        (``teach`` distill or both)."""
        c = self.cfg
        terms = [RevisionSurrogate(c.gamma, behaviour_one=c.revision_loss == "luffy")] \
            if c.revises and c.revision_loss != "none" else []
        terms += [SupervisedTerm(c.sft_coef)] if c.revises and c.sft_coef else []
        terms += [DistillationTerm(c.distill_coef, c.distill_divergence, c.distill_beta)] \
            if c.distils else []
        return terms

    def advantages(self, batch: TrainBatch, loss_mask: torch.Tensor,
                   estimate: Estimate) -> Advantages:
        """The algorithm's estimate (``estimate(batch, loss_mask)``) for a batch HeRL changed:
        over the whole batch (``baseline=group``), or over its on-policy rows alone with each
        revision's reward centred on its group's on-policy mean (``baseline=on_policy``)."""
        revision = batch.rows.get("revision")
        if self.cfg.baseline == "group" or revision is None or not revision.any():
            return estimate(batch, loss_mask)
        on_policy = replace(batch, rewards=batch.rewards.masked_fill(revision, float("nan")))
        out = estimate(on_policy, loss_mask)
        revised = revision_advantages(batch.rewards, batch.rollout.group_ids, revision)
        rows = revision.unsqueeze(-1)
        return replace(out, advantages=torch.where(
            rows, revised.unsqueeze(-1) * loss_mask.to(out.advantages.dtype), out.advantages))

    def plan(self, batch: ScoredBatch) -> Plan:
        """The failed groups and the drafts to revise (the best of each, most criteria met
        first), with the request for their revisions under the hindsight prompt."""
        rewards, groups = batch.rewards.total, batch.rollout.group_ids
        grades = batch.rewards.grades or [None] * len(batch)
        num_met = torch.tensor([g.num_met if g else -1 for g in grades], device=groups.device)
        failed = failed_groups(batch.rewards.met(), groups, self.cfg.threshold)
        drafts = [c for g in failed for c in choose_candidates(
            rewards, num_met, groups, g, self.cfg.candidate_limit)]
        if not drafts or batch.rewards.grades is None or not self.cfg.revises:
            return Plan(failed, drafts, None)
        rows = [batch.rows[int(groups[d])] for d in drafts]
        contexts = [self.prompt(row, batch.texts[d], batch.rewards.grades[d].verdicts)
                    for row, d in zip(rows, drafts)]
        return Plan(failed, drafts, (rows, contexts, [self.cfg.revisions] * len(drafts),
                                     [self.cfg.temperature] * len(drafts),
                                     self.max_new_tokens))

    def merge(self, batch: ScoredBatch, plan: Plan, revisions: ScoredBatch | None,
              logprobs: LogProbs) -> tuple[TrainBatch, dict]:
        """Pay drafts their bonus and let accepted revisions overwrite random slots of their
        group; mark the rows each term trains (``policy``, ``revision``, ``sft``) and append
        the replayed revisions. ``logprobs`` gives the log-probs of a rollout under the guide
        that wrote the revisions (the behaviour log-probs of revisions trained under the
        original prompt). Returns the batch to train on and ``herl/*`` metrics."""
        revision = torch.zeros(len(batch), dtype=torch.bool, device=batch.rollout.group_ids.device)
        train_batch = TrainBatch(batch.rollout, batch.rewards.total.clone(), batch.texts,
                                 trained_under=[False] * len(batch))
        metrics = {"herl/failed_groups": len(plan.failed) / len(batch.rows),
                   "herl/drafts": len(plan.drafts), "herl/tokens": 0}
        if revisions is not None:
            revised = _Revisions(plan.failed, plan.drafts, revisions)
            gains = self._pay_bonus(train_batch, batch, revised)
            accepted, beat = self._replace(train_batch, revision, batch, revised)
            if accepted and self.cfg.context != "hindsight" and \
                    self.cfg.revision_loss == "shaped":
                train_batch.behaviour_logps = self._behaviour(train_batch, revised, accepted,
                                                              logprobs)
            mask = train_batch.rollout.completion_mask
            metrics.update(revision_metrics(revisions, gains, beat, len(plan.failed), accepted,
                                            float(mask[revision].sum() / mask.sum())))
        sft = revision & torch.tensor([u is True for u in train_batch.trained_under],
                                      dtype=torch.bool, device=revision.device)
        train_batch.rows = {"policy": ~revision, "revision": revision, "sft": sft}
        if self.cfg.sft_buffer:
            replayed = self.buffer.replay(train_batch, self.codec.tokenizer.pad_token_id)
            self.buffer.add(train_batch, sft)
            metrics["herl/replayed"] = len(replayed) - len(train_batch)
            train_batch = replayed
        return train_batch, metrics

    def _pay_bonus(self, train_batch: TrainBatch, batch: ScoredBatch,
                   revised: _Revisions) -> list[float]:
        """Each draft's reward plus its bonus; returns each draft's best gain."""
        gains, original = [], batch.rewards.total
        for j, d in enumerate(revised.drafts):
            own = revised.batch.rewards.total[revised.batch.rollout.group_ids == j].tolist()
            train_batch.rewards[d] = draft_bonus(float(original[d]), own, self.cfg.bonus_alpha)
            known = [r for r in own if r == r]
            if known:
                gains.append(max(known) - float(original[d]))
        return gains

    def _replace(self, train_batch: TrainBatch, revision: torch.Tensor, batch: ScoredBatch,
                 revised: _Revisions) -> tuple[list[tuple[int, int]], int]:
        """Accepted revisions overwrite random slots of their group (fallback: a copy of the
        best draft). Returns the (slot, revision row) pairs and the groups a revision beat."""
        original, groups = batch.rewards.total, batch.rollout.group_ids
        scores = revised.batch.rewards.total
        writes: dict[int, Sample] = {}
        texts = list(batch.texts)
        accepted, beat = [], 0
        for g in revised.failed:
            members = torch.nonzero(groups == g).flatten().tolist()
            best = float(original[members][~original[members].isnan()].max())
            candidates = revised.of_group(g, groups)
            beat += any(float(scores[k]) > best for k in candidates)
            draft_of = revised.batch.rollout.group_ids
            draft_rewards = [float(original[revised.drafts[int(draft_of[k])]])
                             for k in candidates]
            chosen = [candidates[k] for k in accept(
                [float(scores[k]) for k in candidates], draft_rewards, best, self.cfg.accept,
                self.cfg.replace_top_n)]
            placed = [(k, context) for k in chosen for context in self.contexts]
            for slot, (k, context) in zip(
                    self.rng.sample(members, min(len(placed), len(members))), placed):
                writes[slot] = self._trained_sample(batch, revised, members[0], k, context)
                texts[slot], train_batch.rewards[slot] = revised.batch.texts[k], scores[k]
                revision[slot] = True
                train_batch.trained_under[slot] = True if context == "original" else \
                    self.codec.tokenizer.decode(writes[slot].prompt, skip_special_tokens=True)
                accepted.append((slot, k))
            if not chosen and self.cfg.fallback and len(members) > 1:
                source = next(d for d in revised.drafts if int(groups[d]) == g)
                slot = self.rng.choice([m for m in members if m != source])
                writes[slot] = sample_at(batch.rollout, source)  # on-policy: a plain copy
                texts[slot], train_batch.rewards[slot] = batch.texts[source], original[source]
        train_batch.rollout = splice(batch.rollout, writes, self.codec.tokenizer.pad_token_id)
        train_batch.texts = texts
        return accepted, beat

    def _trained_sample(self, batch: ScoredBatch, revised: _Revisions, member: int,
                        k: int, context: str) -> Sample:
        """Revision ``k`` as trained: under its hindsight prompt and temperature, or under the
        group's original prompt and sampling temperature (then the ratio's numerator is
        ``pi_T(z | x)`` and its denominator the behaviour log-probs under the hindsight
        prompt)."""
        sample = sample_at(revised.batch.rollout, k)
        if context == "hindsight":
            return sample
        return replace(sample, prompt=batch.rollout.prompt(member),
                       temperature=float(batch.rollout.temperatures[member]))

    @torch.no_grad()
    def _behaviour(self, train_batch: TrainBatch, revised: _Revisions,
                   accepted: list[tuple[int, int]], logprobs: LogProbs) -> torch.Tensor:
        """Log-probs of accepted revisions under the hindsight prompt and temperature they were
        sampled at: the denominator of a true importance ratio (for a revision trained under
        that same prompt, the ratio starts at 1)."""
        sampled = revised.batch.rollout.select([k for _, k in accepted])
        logps = logprobs(sampled)
        full = logps.new_zeros(train_batch.rollout.completion_ids.shape)
        for i, (slot, k) in enumerate(accepted):
            n = int(revised.batch.rollout.lengths[k])
            full[slot, :n] = logps[i, :n]
        return full

    def state(self) -> dict:
        return {"rng": list(self.rng.getstate()), "buffer": self.buffer.state()}

    def load(self, state: dict | list) -> None:
        if isinstance(state, list):  # checkpoints of earlier versions: the slot generator
            state = {"rng": state, "buffer": []}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.buffer.load(state["buffer"])

"""HeRL: hindsight-experience-guided exploration (Experience is the Best Teacher, 2025).

When no sample of a group meets the whole rubric, the policy is shown its best failed attempt
with the criteria it met and missed, and asked to revise. Revisions are graded against the
original rubric; a draft earns ``alpha * (best revision reward - its reward)`` as a bonus; the
best revision that beats the group overwrites ``replace_top_n`` random slots of the group, keeping
the group id, so it is normalised with the on-policy samples. Its tokens get the shaped loss
``-A * rho / (rho + gamma)`` (:func:`explorl.algorithms.losses.shaped_surrogate`).

The functions here are pure over tensors and lists; :func:`augment` runs them in order around
the generation and grading the trainer supplies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from explorl.rollout.engine import Rollout, left_pad

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


@dataclass
class Sample:
    """One row's content to write into a rollout: prompt, completion, how it was drawn."""

    prompt: list[int]
    completion: list[int]
    temperature: float
    truncated: bool


def sample_at(rollout: Rollout, i: int) -> Sample:
    return Sample(rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist(),
                  rollout.completion_ids[i, : int(rollout.lengths[i])].tolist(),
                  float(rollout.temperatures[i]), bool(rollout.truncated[i]))


def splice(rollout: Rollout, writes: dict[int, Sample], pad_id: int) -> Rollout:
    """``rollout`` with row ``slot`` overwritten by ``writes[slot]``; group ids and the row count
    stay, so the written samples are normalised with their group."""
    rows = [writes.get(i) or sample_at(rollout, i) for i in range(len(rollout))]
    prompt_ids, prompt_mask = left_pad([r.prompt for r in rows], pad_id)
    width = max(max(len(r.completion) for r in rows), 1)
    completion_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, r in enumerate(rows):
        completion_ids[i, : len(r.completion)] = torch.tensor(r.completion, dtype=torch.long)
        completion_mask[i, : len(r.completion)] = 1
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                   torch.tensor([r.temperature for r in rows]), rollout.group_ids.clone(),
                   torch.tensor([r.truncated for r in rows]))


@dataclass
class Revised:
    """What hindsight hands the update."""

    rollout: Rollout  # the rollout to train on: accepted revisions written into their slots
    rewards: torch.Tensor  # its rewards, drafts with their bonus
    revision: torch.Tensor  # [N] bool: the rows that hold a revision
    sampled: Rollout | None  # the revisions as sampled, under their hindsight prompts
    picks: list[tuple[int, int]]  # (slot in ``rollout``, row of ``sampled``) per accepted one
    metrics: dict


def augment(cfg, rows: list[dict], prompts: list[list[int]], rollout: Rollout, rewards,
            engine, score, revise_prompt, decode, passed, rng, pad_id: int) -> Revised:
    """HeRL steps 2-8 on one step's samples: revise the best drafts of failed groups under
    the hindsight prompt, pay drafts their bonus and let accepted revisions overwrite random
    slots of their group.

    ``cfg`` holds the ``herl_*`` knobs; ``rewards`` are the samples' scored rewards with their
    grades. The trainer supplies the rest: ``engine`` (generates revisions), ``score(rows,
    rollout)``, ``revise_prompt(row, draft_text, verdicts)`` (token ids of the hindsight
    prompt), ``decode(rollout)``, ``passed(rewards)``, the slot-choice ``rng`` and the pad id.
    """
    original = rewards.total
    total = original.clone()
    groups = rollout.group_ids
    num_met = torch.tensor([g.num_met if g else -1
                            for g in rewards.grades or [None] * len(rollout)])
    failed = failed_groups(original, groups, cfg.herl_threshold)
    drafts = [c for g in failed for c in choose_candidates(
        original, num_met, groups, g, cfg.herl_candidate_limit)]
    revision = torch.zeros(len(rollout), dtype=torch.bool)
    metrics = {"herl/failed_groups": len(failed) / (int(groups.max()) + 1),
               "herl/drafts": len(drafts), "herl/tokens": 0}
    if not drafts or rewards.grades is None:
        return Revised(rollout, total, revision, None, [], metrics)

    # Guided regeneration, graded against each draft's original rubric.
    texts = decode(rollout)
    contexts = [revise_prompt(rows[int(groups[d])], texts[d], rewards.grades[d].verdicts)
                for d in drafts]
    out = engine.generate(contexts, [cfg.herl_revisions] * len(drafts),
                          [cfg.herl_temperature] * len(drafts),
                          cfg.herl_max_length or cfg.max_completion_length)
    draft_of = [drafts[int(j)] for j in out.group_ids]
    scored = score(rows, replace(out, group_ids=groups[draft_of]))
    # Draft bonus, then replacement: accepted revisions overwrite random slots of their
    # group (trained under the hindsight prompt or the original one).
    gains = []
    for j, d in enumerate(drafts):
        mine = scored.total[out.group_ids == j].tolist()
        total[d] = draft_bonus(float(original[d]), mine, cfg.herl_bonus_alpha)
        known = [r for r in mine if r == r]
        if known:
            gains.append(max(known) - float(original[d]))
    writes: dict[int, Sample] = {}
    picks, beat = [], 0
    for g in failed:
        members = torch.nonzero(groups == g).flatten().tolist()
        best = float(original[members][~original[members].isnan()].max())
        mine = [k for k, d in enumerate(draft_of) if int(groups[d]) == g]
        beat += any(float(scored.total[k]) > best for k in mine)
        chosen = [mine[k] for k in accept(
            [float(scored.total[k]) for k in mine],
            [float(original[draft_of[k]]) for k in mine],
            best, cfg.herl_accept, cfg.herl_replace_top_n)]
        for slot, k in zip(rng.sample(members, min(len(chosen), len(members))), chosen):
            context = contexts[int(out.group_ids[k])] if cfg.herl_context == "hindsight" \
                else prompts[g]
            writes[slot] = replace(sample_at(out, k), prompt=context)
            total[slot] = scored.total[k]
            revision[slot] = True
            picks.append((slot, k))
        if not chosen and cfg.herl_fallback and len(members) > 1:
            source = next(d for d in drafts if int(groups[d]) == g)
            slot = rng.choice([m for m in members if m != source])
            writes[slot] = sample_at(rollout, source)  # on-policy: a plain copy
            total[slot] = original[source]
    trained = splice(rollout, writes, pad_id)
    generated = int(out.completion_mask.sum())
    metrics.update({
        "herl/revisions": len(out),
        "herl/revision_success": float(passed(scored).float().mean()),
        "herl/revision_gain": sum(gains) / len(gains) if gains else math.nan,
        "herl/beat_group": beat / len(failed),
        "herl/replaced": len(picks),
        "herl/revision_token_fraction":
            float(trained.completion_mask[revision].sum() / trained.completion_mask.sum()),
        "herl/tokens": generated,
    })
    return Revised(trained, total, revision, out, picks, metrics)

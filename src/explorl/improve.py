"""Hindsight at test time: answer, grade against the rubric, revise with the met and unmet
criteria, repeat; and a probe of whether a model reads its hindsight at all.

``improve`` keeps the best graded answer and reports success after each round. The probe
compares fresh samples with revisions of failed drafts, with the lists shown, blanked and
swapped: if blanked lists do as well as real ones, the model does not read them.
"""

from __future__ import annotations

import numpy as np
import torch

from explorl.data.prompts import PromptCodec
from explorl.exploration.hindsight import criteria_of, hindsight_prompt
from explorl.rewards.rubric import Grade, RubricReward
from explorl.rollout.engine import RolloutEngine


def _answer(engine: RolloutEngine, tokenizer, codec, rows: list[dict], encoded: list[list[int]],
            max_new_tokens: int, temperature: float, episodes=None) -> tuple[list[str], list]:
    """Each row's answer to its context: the texts (a draft for hindsight) and the completions
    as the rubric grades them. ``episodes`` (an :class:`~explorl.agents.AgentCollector`):
    multi-turn episodes with its tools, the text the whole episode, graded on its messages."""
    if episodes is not None:
        from explorl.agents.rollout import closed

        played = episodes.play(rows, encoded, [1] * len(rows), [temperature or 1.0] * len(rows),
                               max_new_tokens, greedy=temperature == 0)
        closed(played)
        return ([tokenizer.decode(e.ids, skip_special_tokens=True) for e in played],
                [e.messages for e in played])
    if temperature == 0:
        ids = engine.greedy(encoded, max_new_tokens)
    else:
        ids = engine.generate(encoded, [1] * len(encoded), [temperature] * len(encoded),
                              max_new_tokens).completions()
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return texts, [codec.completion(r["prompt"], t) for r, t in zip(rows, texts)]


def _grade(reward: RubricReward, rows, completions) -> list[Grade | None]:
    return reward.grade([r["prompt"] for r in rows], completions,
                        rubric=[criteria_of(r) for r in rows])


def _success(grades) -> float:
    return float(np.mean([bool(g and g.strict) for g in grades]))


def _dense(grades) -> float:
    return float(np.mean([g.dense if g else 0.0 for g in grades]))


@torch.no_grad()
def improve(engine: RolloutEngine, tokenizer, rows: list[dict], template: str, rounds: int = 3,
            reward: RubricReward | None = None, max_new_tokens: int = 16,
            temperature: float = 0.0, codec: PromptCodec | None = None,
            lists: str = "shown", episodes=None) -> dict:
    """Answer each row, then up to ``rounds`` times revise the latest answer of rows whose best
    answer misses a criterion. Returns ``success_by_round`` (share of rows whose best answer
    meets every criterion after round r; round 0 is the first answer), ``dense_by_round`` and
    the best ``answers``. ``temperature`` 0 is greedy. ``episodes``: answers and revisions are
    episodes with its tools (see :func:`_answer`)."""
    codec = codec or PromptCodec(tokenizer)
    reward = reward or RubricReward("strict")

    def answer(todo_rows, contexts):
        texts, completions = _answer(engine, tokenizer, codec, todo_rows, contexts,
                                     max_new_tokens, temperature, episodes)
        return texts, _grade(reward, todo_rows, completions)

    latest, latest_grades = answer(rows, [codec.encode(r["prompt"]) for r in rows])
    best, best_grades = list(latest), list(latest_grades)
    success, dense = [_success(best_grades)], [_dense(best_grades)]
    for _ in range(rounds):
        todo = [i for i, g in enumerate(best_grades) if g is not None and not g.strict
                and latest_grades[i] is not None]
        if todo:
            contexts = [hindsight_prompt(codec, template, rows[i], latest[i],
                                         latest_grades[i].verdicts, lists) for i in todo]
            texts, grades = answer([rows[i] for i in todo], contexts)
            for i, text, grade in zip(todo, texts, grades):
                latest[i], latest_grades[i] = text, grade
                if grade is not None and grade.dense > best_grades[i].dense:
                    best[i], best_grades[i] = text, grade
        success.append(_success(best_grades))
        dense.append(_dense(best_grades))
    return {"success_by_round": success, "dense_by_round": dense, "n": len(rows),
            "answers": best}


@torch.no_grad()
def hindsight_probe(engine: RolloutEngine, tokenizer, rows: list[dict], reward: RubricReward,
                    template: str,
                    max_new_tokens: int = 16, samples: int = 8, temperature: float = 1.0,
                    seed: int = 0, codec: PromptCodec | None = None) -> dict:
    """P(all met) of fresh samples against revisions of failed drafts (one per prompt), with the
    met/unmet lists shown, blanked and swapped."""
    torch.manual_seed(seed)
    codec = codec or PromptCodec(tokenizer)
    encoded = [codec.encode(r["prompt"]) for r in rows]
    out = engine.generate(encoded, [samples] * len(rows), [temperature] * len(rows),
                          max_new_tokens)
    texts = tokenizer.batch_decode(out.completions(), skip_special_tokens=True)
    sample_rows = [rows[int(g)] for g in out.group_ids]
    grades = _grade(reward, sample_rows, [codec.completion(r["prompt"], t)
                                          for r, t in zip(sample_rows, texts)])
    drafts: dict[int, int] = {}
    for k, (g, grade) in enumerate(zip(out.group_ids.tolist(), grades)):
        if grade is not None and not grade.strict and g not in drafts:
            drafts[g] = k
    result = {"prompts": len(rows), "fresh_all_met": _success(grades),
              "prompts_with_failed_draft": len(drafts)}
    if not drafts:
        return result
    same = [k for k, g in enumerate(out.group_ids.tolist()) if g in drafts]
    result["fresh_all_met_same_prompts"] = _success([grades[k] for k in same])
    draft_rows = [rows[g] for g in drafts]
    result["draft_dense"] = _dense([grades[k] for k in drafts.values()])
    for lists in ("shown", "blank", "swapped"):
        contexts = [hindsight_prompt(codec, template, rows[g], texts[k], grades[k].verdicts,
                                     lists) for g, k in drafts.items()]
        revised_grades = _grade(reward, draft_rows, _answer(
            engine, tokenizer, codec, draft_rows, contexts, max_new_tokens, temperature)[1])
        result[f"revision_all_met_{lists}"] = _success(revised_grades)
        result[f"revision_dense_{lists}"] = _dense(revised_grades)
    return result


__all__ = ["hindsight_probe", "improve"]

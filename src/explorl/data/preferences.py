"""Preference pairs in TRL's layouts, the text a reward model reads, and pairs from samples.

Layouts (one row per pair, from the same sources as prompt data: jsonl, json, parquet, a
``datasets`` folder or object):

* explicit prompt: ``prompt``, ``chosen``, ``rejected``: strings (``prompt + chosen`` is the
  text), or message lists (``prompt`` the conversation so far, ``chosen`` / ``rejected`` the
  assistant's turn);
* implicit prompt: ``chosen`` and ``rejected`` alone, each the whole text or conversation;
* an optional ``margin`` column: how much more the chosen answer should score
  (``-log sigmoid(r_chosen - r_rejected - margin)``).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from explorl.data.loaders import check_prompt, plain_value, read_source, type_name
from explorl.errors import UserError


def load_pairs(source: Any, *, name: str = "dataset") -> list[dict]:
    """Rows ``{prompt (or None), chosen, rejected, margin}``, each checked; a bad one raises
    :class:`UserError` naming the file, the line (or row) and the field."""
    table = read_source(source, name)
    if not table.rows:
        raise UserError(f"{table.label}: data set is empty (no rows)")
    return [_pair(row, table.where(i)) for i, row in enumerate(table.rows)]


def _pair(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with 'chosen' and 'rejected' fields, got "
                        f"{type_name(row)}")
    row = plain_value(row)
    for key in ("chosen", "rejected"):
        if key not in row:
            raise UserError(f"{where}: missing '{key}' column (a preference pair needs "
                            "'chosen' and 'rejected', and may have 'prompt' and 'margin')")
        _check_answer(row[key], where, key)
    prompt = row.get("prompt")
    if prompt is not None:
        check_prompt(prompt, where)
        if isinstance(prompt, list) != isinstance(row["chosen"], list):
            raise UserError(f"{where}: prompt: a message list needs message-list answers, a "
                            "string prompt string answers")
    if row["chosen"] == row["rejected"]:
        raise UserError(f"{where}: rejected: identical to chosen (nothing to prefer)")
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not math.isfinite(margin):
        raise UserError(f"{where}: margin: expected a finite number, got {margin!r}")
    return {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"],
            "margin": float(margin)}


def _check_answer(value: Any, where: str, key: str, allow_empty: bool = False) -> None:
    """A string or assistant messages; empty text only with ``allow_empty`` (a sample whose
    model stopped at once)."""
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise UserError(f"{where}: {key}: empty completion")
        return
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: {key}: expected a string or a non-empty list of messages, "
                        f"got {type_name(value)}")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or not isinstance(message.get("role"), str):
            raise UserError(f"{where}: {key}[{i}]: expected a {{role, content}} message")
    if not any(m["content"].strip() for m in value) and not allow_empty:
        raise UserError(f"{where}: {key}: empty completion")


def pair_text(tokenizer, prompt, completion) -> str:
    """The text a reward model scores: prompt and completion joined, through the chat template
    for message lists when the tokenizer has one."""
    if isinstance(completion, str):
        return (prompt or "") + completion
    messages = (prompt or []) + completion
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(m["content"] for m in messages)


def pairs_from_samples(samples: list[dict], threshold: float = 1.0, per_prompt: int = 4,
                       seed: int = 0) -> list[dict]:
    """Preference pairs from scored samples (``explorl sample``'s rows): for each prompt, up to
    ``per_prompt`` pairs of a completion scoring at least ``threshold`` (chosen) and one below
    it (rejected), each answer used at most once, distinct texts; empty completions and unknown
    rewards take no part."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_prompt[repr(s["prompt"])].append(s)
    pairs = []
    for group in by_prompt.values():
        good = _distinct([s for s in group if _known(s) and s["reward"] >= threshold])
        bad = _distinct([s for s in group if _known(s) and s["reward"] < threshold])
        rng.shuffle(good)
        rng.shuffle(bad)
        for chosen, rejected in list(zip(good, bad))[:per_prompt]:
            pairs.append({"prompt": chosen["prompt"], "chosen": chosen["completion"],
                          "rejected": rejected["completion"]})
    return pairs


def load_samples(source: Any) -> list[dict]:
    """Scored samples (``explorl sample``'s rows), each checked for its fields."""
    table = read_source(source, "samples")
    if not table.rows:
        raise UserError(f"{table.label}: data set is empty (no rows)")
    for i, row in enumerate(table.rows):
        missing = [k for k in ("prompt", "completion", "reward")
                   if not isinstance(row, dict) or k not in row]
        if missing:
            raise UserError(f"{table.where(i)}: missing field {missing[0]!r} (explorl sample "
                            "writes prompt, completion and reward)")
    return [plain_value(row) for row in table.rows]


def load_scored(source: Any, *, name: str = "dataset") -> list[dict]:
    """Scored samples for offline training: each row's ``prompt``, ``completion``, a finite
    ``reward`` and an optional ``truncated`` flag checked, and ``where`` (file:line) kept for
    later errors about the row."""
    table = read_source(source, name)
    if not table.rows:
        raise UserError(f"{table.label}: data set is empty (no rows)")
    out = []
    for i, row in enumerate(table.rows):
        where = table.where(i)
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object with prompt, completion and reward, "
                            f"got {type_name(row)}")
        row = plain_value(row)
        if "messages" in row and "tool_calls" in row:
            raise UserError(f"{where}: an episode with tools (explorl sample of a multi-turn "
                            "task): its completion holds the tools' answers, which offline "
                            "methods would train as the model's; use single-turn samples")
        for key in ("prompt", "completion", "reward"):
            if key not in row:
                raise UserError(f"{where}: missing field {key!r} (a scored sample has prompt, "
                                "completion and reward; explorl sample writes them)")
        check_prompt(row["prompt"], where)
        _check_answer(row["completion"], where, "completion", allow_empty=True)
        reward = row["reward"]
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) \
                or not math.isfinite(reward):
            raise UserError(f"{where}: reward: expected a finite number, got {reward!r}")
        truncated = row.get("truncated", False)
        if not isinstance(truncated, bool):
            raise UserError(f"{where}: truncated: expected true or false, got {truncated!r}")
        out.append({"prompt": row["prompt"], "completion": row["completion"],
                    "reward": float(reward), "truncated": truncated, "where": where})
    return out



def _known(sample: dict) -> bool:
    r, text = sample.get("reward"), sample.get("completion")
    return isinstance(r, (int, float)) and math.isfinite(r) and bool(
        text.strip() if isinstance(text, str) else text)


def _distinct(samples: list[dict]) -> list[dict]:
    seen, out = set(), []
    for s in samples:
        key = repr(s["completion"])
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out

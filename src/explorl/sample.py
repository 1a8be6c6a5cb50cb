"""``explorl sample``: N completions per prompt from a model, written with their rewards.

One JSON line per completion: ``prompt``, ``completion``, ``reward`` (null where the reward is
unknown), ``truncated`` (no EOS within ``--max-new-tokens``), then the data set's own columns.
A multi-turn task's lines are episodes: ``completion`` is the whole episode's text (the tools'
answers in it), and ``messages`` (as reward functions see it) and ``tool_calls`` come with it;
offline methods refuse them (they would train the tools' answers as the model's).
``explorl pairs`` turns such a file into preference pairs for ``explorl rm``; ``explorl train
method=ilql`` learns from it as it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from explorl.rewards.base import Scorer
from explorl.rollout.engine import RolloutEngine


def _plain(value):
    """JSON-able data: parsed rubric criteria back to mappings."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if callable(value):
        return f"{value.__module__}:{getattr(value, '__qualname__', value)}"
    return value


@torch.no_grad()
def sample_rows(engine: RolloutEngine, tokenizer, rows: list[dict], scorer: Scorer, n: int,
                temperature: float, max_new_tokens: int, prompts_per_call: int = 64) -> list[dict]:
    """``n`` completions of each row's prompt at ``temperature``, scored by ``scorer``."""
    out = []
    for s in range(0, len(rows), prompts_per_call):
        chunk = rows[s:s + prompts_per_call]
        encoded = [scorer.codec.encode(r["prompt"]) for r in chunk]
        rollout = engine.generate(encoded, [n] * len(chunk), [temperature] * len(chunk),
                                  max_new_tokens)
        ids = rollout.completions()
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        owners = [chunk[g] for g in rollout.group_ids.tolist()]
        rewards = scorer(owners, texts, ids).total.tolist()
        cut = rollout.truncated.tolist()
        for row, text, reward, truncated in zip(owners, texts, rewards, cut):
            columns = {k: _plain(v) for k, v in row.items() if k != "prompt"}
            out.append({"prompt": row["prompt"],
                        "completion": scorer.codec.completion(row["prompt"], text),
                        "reward": reward if math.isfinite(reward) else None,
                        "truncated": truncated, **columns})
    return out


def sample_episodes(collector, rows: list[dict], n: int, temperature: float,
                    max_new_tokens: int, prompts_per_call: int = 64) -> list[dict]:
    """``n`` episodes of each row's prompt at ``temperature``, played by an
    :class:`~explorl.agents.AgentCollector` and scored by its reward functions."""
    from explorl.agents.rollout import closed

    out = []
    for s in range(0, len(rows), prompts_per_call):
        chunk = rows[s:s + prompts_per_call]
        episodes = collector.play(chunk, [collector.codec.encode(r["prompt"]) for r in chunk],
                                  [n] * len(chunk), [temperature] * len(chunk), max_new_tokens)
        rewards = collector.rewards(episodes).total.tolist()
        closed(episodes)
        for e, reward in zip(episodes, rewards):
            columns = {k: _plain(v) for k, v in e.row.items() if k != "prompt"}
            out.append({"prompt": e.row["prompt"],
                        "completion": collector.tokenizer.decode(e.ids, skip_special_tokens=True),
                        "reward": reward if math.isfinite(reward) else None,
                        "truncated": not e.ended, "messages": e.messages,
                        "tool_calls": e.calls, **columns})
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    """All rows or nothing: written to a temporary file, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)

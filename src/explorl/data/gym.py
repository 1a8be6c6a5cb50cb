"""reasoning-gym tasks as explorl rows, scored by reasoning-gym's own ``score_answer``.

A data set spec ``reasoning_gym:<task>`` (e.g. ``reasoning_gym:countdown``) names one of the
package's procedural tasks; keyword arguments of the task's config (``min_numbers=3``, ...) are
passed through. Rows:

* ``prompt``: ``[system, user]`` messages with reasoning-gym's ``default`` system prompt, which
  asks for the answer inside ``<answer></answer>``; with ``system_prompt=None``, the bare
  question as a plain string.
* ``answer``: the reference answer (a string, for display and for other rewards).
* ``gym_task``, ``gym_config``: the task name and its config as JSON, to rebuild the scorer.
* ``gym_entry``: the whole reasoning-gym entry (question, answer, metadata) as JSON. A string
  keeps any metadata layout intact through ``.jsonl`` and Parquet.
* ``prompt_id``: ``<task>:<seed>:<index>``.

reasoning-gym draws item ``i`` of a data set seeded ``s`` from ``Random(s + i)``, so item ``i + 1``
of seed ``s`` is item ``i`` of seed ``s + 1``: held-out rows taken from "another seed" would
repeat train rows. :func:`gym_splits` therefore takes both splits from one seed, at disjoint
indices, and drops train rows whose question is also held out.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from typing import Any

from explorl.data.prompts import completion_text
from explorl.errors import UserError

SPEC_PREFIX = "reasoning_gym:"
DEFAULT_SYSTEM_PROMPT = "default"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_spec(spec: Any) -> str | None:
    """The task name of a ``reasoning_gym:<task>`` data set spec, or None for anything else."""
    if isinstance(spec, str) and spec.startswith(SPEC_PREFIX):
        return spec[len(SPEC_PREFIX):].strip()
    return None


def gym_rows(name: str, size: int, seed: int = 0, *, start: int = 0,
             system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, **task_kwargs) -> list[dict]:
    """``size`` rows of task ``name``: items ``start .. start + size - 1`` of the data set seeded
    ``seed`` (default 0), the same rows on every call. ``system_prompt``: a key of
    ``reasoning_gym.utils.SYSTEM_PROMPTS`` (default ``default``), literal text, or None for a
    plain-string prompt. ``task_kwargs`` go to the task's config."""
    dataset = _create(name, seed, start + size, task_kwargs)
    system = _system_text(system_prompt)
    config = json.dumps(task_kwargs, sort_keys=True)
    return [_row(name, seed, i, dataset[i], system, config) for i in range(start, start + size)]


def gym_splits(name: str, train_size: int, eval_size: int, seed: int = 0, *,
               system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
               **task_kwargs) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)`` of task ``name``: held-out items ``0 .. eval_size - 1``, train items
    from ``eval_size`` on, skipping any whose question is held out. A task with fewer distinct
    questions than asked for gives a shorter train split (up to ``eval_size`` spare items are
    read to replace skipped ones)."""
    heldout = gym_rows(name, eval_size, seed, system_prompt=system_prompt, **task_kwargs)
    held = {_question(r) for r in heldout}
    spare = gym_rows(name, train_size + eval_size, seed, start=eval_size,
                     system_prompt=system_prompt, **task_kwargs)
    train = [r for r in spare if _question(r) not in held]
    return train[:train_size], heldout


def extract_answer(completion: Any) -> str | None:
    """The text inside the last ``<answer>...</answer>`` of a completion (stripped); without
    tags, its last non-empty line; None for an empty completion. Conversational completions
    use the last message's content."""
    text = completion_text(completion)
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def gym_reward(prompts, completions, completion_ids=None, *, gym_task: list[str],
               gym_entry: list[str], gym_config: list[str] | None = None,
               **columns) -> list[float | None]:
    """reasoning-gym's ``score_answer`` of each completion's :func:`extract_answer` (TRL
    signature). Scores lie in [0, 1]; 1.0 is a correct answer. Wrong answers can earn partial
    credit: the default scorer gives ``len(reference) / len(extracted)`` when the reference is a
    substring of the extracted text, countdown gives 0.01 (unparseable) or 0.05 (wrong value).
    :func:`gym_exact_reward` counts only correct answers. A row without ``gym_entry`` gets None
    (not applicable)."""
    configs = gym_config or ["{}"] * len(completions)
    rewards: list[float | None] = []
    for completion, task, entry, config in zip(completions, gym_task, gym_entry, configs):
        if not task or not entry:
            rewards.append(None)
            continue
        scorer, reference = _scorer(task, config or "{}"), decode_entry(entry)
        try:
            score = float(scorer(extract_answer(completion), reference))
        except Exception:  # noqa: BLE001 - an answer a scorer chokes on is a wrong answer
            score = 0.0
        rewards.append(score)
    return rewards


def gym_exact_reward(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
    """1.0 where :func:`gym_reward` is 1.0, else 0.0 (None stays None): no partial credit."""
    scores = gym_reward(prompts, completions, completion_ids, **columns)
    return [None if s is None else float(s >= 1.0) for s in scores]


@functools.lru_cache(maxsize=64)
def _scorer(task: str, config: str):
    # Some tasks' scoring reads their config, so the scorer is built with the rows' config.
    return _create(task, 0, 1, json.loads(config)).score_answer


def _create(name: str, seed: int, size: int, task_kwargs: dict):
    rg = _import_reasoning_gym()
    if name not in rg.factory.DATASETS:
        close = difflib.get_close_matches(name, list(rg.factory.DATASETS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"dataset: reasoning_gym has no task {name!r}{hint}")
    try:
        return rg.create_dataset(name, seed=seed, size=max(size, 1), **task_kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f"dataset: reasoning_gym:{name}: bad task arguments "
                        f"{task_kwargs} ({type(e).__name__}: {e})") from None


def _import_reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("dataset: reasoning_gym:<task> needs the reasoning-gym package "
                        "(pip install reasoning-gym, or EXTRAS=gym bash scripts/setup.sh)"
                        ) from None
    return reasoning_gym


def _system_text(system_prompt: str | None) -> str | None:
    if system_prompt is None:
        return None
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return SYSTEM_PROMPTS.get(system_prompt, system_prompt)


def _row(name: str, seed: int, index: int, entry: dict, system: str | None,
         config: str) -> dict:
    question = entry["question"]
    prompt: Any = question if system is None else [
        {"role": "system", "content": system}, {"role": "user", "content": question}]
    answer = entry.get("answer")
    return {
        "prompt": prompt,
        "answer": answer if answer is None or isinstance(answer, str) else json.dumps(answer),
        "gym_task": name,
        "gym_config": config,
        "gym_entry": encode_entry(entry),
        "prompt_id": f"{name}:{seed}:{index}",
    }


def _question(row: dict) -> str:
    prompt = row["prompt"]
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def encode_entry(entry: dict) -> str:
    """A reasoning-gym entry as JSON that :func:`decode_entry` turns back into equal Python
    values: tuples, sets and dicts with non-string keys are tagged, because scorers compare
    them as they are (ARC boards are tuples of tuples)."""
    return json.dumps(_tag(entry))


def decode_entry(text: str) -> dict:
    """Inverse of :func:`encode_entry`."""
    return json.loads(text, object_hook=_untag)


def _tag(value: Any) -> Any:
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _tag(v) for k, v in value.items()}
        return {"__dict__": [[_tag(k), _tag(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_tag(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_tag(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [_tag(v) for v in sorted(value, key=repr)]}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _tag(value.tolist())
    return value


def _untag(obj: dict) -> Any:
    if len(obj) == 1:
        (key, items), = obj.items()
        if key == "__tuple__":
            return tuple(items)
        if key == "__set__":
            return set(items)
        if key == "__dict__":
            return {_hashable(k): v for k, v in items}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


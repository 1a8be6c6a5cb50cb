"""The built-in rubric task: digit strings under several rule-checked constraints.

A prompt such as ``[b] 5 digits, starts 3, has 7:`` asks for a digit string meeting the stated
constraints. In the ``hidden`` variant (``rubric``) the grader also applies one criterion the
prompt does not state: the answer must end with the digit its tag names (a->1, b->4, c->7, d->0).
That rule is learnable, but a policy only finds it by chance or by being told, which is the
regime of rubric-judged tasks where hindsight can matter. In the ``stated`` variant
(``rubric_stated``) the same criterion is written in the prompt.

The SFT warm start (:func:`sft_example`) teaches two modes: imperfect direct answers (which
ignore the tag) and revisions (draft + met and unmet criteria -> an answer meeting them all, close
to the draft). In the revision examples the ending criterion names a random digit, so the only
way to meet it is to read the lists.
"""

from __future__ import annotations

import random

from explorl.rewards.rubric import RULES

TAGS = {"a": "1", "b": "4", "c": "7", "d": "0"}
DIGITS = "0123456789"
TRAIN_SEED, HELDOUT_SEED = 4321, 8765
REVISE_TEMPLATE = "revise {instruction}\nmet: {met_list}\nunmet: {unmet_list}\ndraft: {draft}\nfix:"
"""The compact hindsight prompt the shipped model was warm-started on."""
VARIANTS = {"rubric": True, "rubric_stated": False}  # task name -> the ending is hidden


def _criterion(kind: str, value) -> dict:
    if kind == "len":
        return {"description": f"{value} digits", "check": "num_chars", "args": {"n": value}}
    if kind == "starts":
        return {"description": f"starts {value}", "check": "starts_with",
                "args": {"prefix": value}}
    if kind == "has":
        return {"description": f"has {value}", "check": "include", "args": {"words": [value]}}
    if kind == "no":
        return {"description": f"no {value}", "check": "avoid", "args": {"words": [value]}}
    return {"description": f"ends {value}", "check": "ends_with", "args": {"suffix": value}}


def _constraints(rng: random.Random, end: str) -> tuple[str, list[tuple[str, object]]]:
    """A solution ending in ``end`` and the stated constraints it meets (length first)."""
    n = rng.randint(4, 7)
    solution = "".join(rng.choice(DIGITS) for _ in range(n - 1)) + end
    stated: list[tuple[str, object]] = [("len", n)]
    for kind in rng.sample(["starts", "has", "no"], rng.randint(1, 3)):
        if kind == "starts":
            stated.append(("starts", solution[0]))
        elif kind == "has":
            stated.append(("has", rng.choice(solution[1:-1])))
        else:
            absent = [d for d in DIGITS if d not in solution]
            if absent:
                stated.append(("no", rng.choice(absent)))
    return solution, stated


def make_row(rng: random.Random, hidden: bool, end: str | None = None) -> dict:
    tag = rng.choice(sorted(TAGS))
    end = end if end is not None else TAGS[tag]
    solution, stated = _constraints(rng, end)
    shown = stated if hidden else stated + [("ends", end)]
    prompt = f"[{tag}] " + ", ".join(_criterion(k, v)["description"] for k, v in shown) + ":"
    rubric = [_criterion(k, v) for k, v in stated + [("ends", end)]]
    return {"prompt": prompt, "rubric": rubric, "solution": solution, "prompt_id": prompt,
            "level": f"{len(rubric)} criteria"}


def splits(train_size: int, heldout_size: int, hidden: bool = True) -> tuple[list, list]:
    """Train and held-out rows; no prompt is in both."""
    rng = random.Random(HELDOUT_SEED)
    heldout, held = [], set()
    while len(heldout) < heldout_size:
        row = make_row(rng, hidden)
        if row["prompt"] not in held:
            held.add(row["prompt"])
            heldout.append(row)
    rng = random.Random(TRAIN_SEED)
    train = []
    while len(train) < train_size:
        row = make_row(rng, hidden)
        if row["prompt"] not in held:
            train.append(row)
    return train, heldout


# --- the SFT warm start -------------------------------------------------------------------------
def _met(text: str, c: dict) -> bool:
    return RULES[c["check"]].check(text, **c["args"])


def _edit(rng: random.Random, text: str) -> str:
    """One random substitution, insertion or deletion."""
    i = rng.randrange(len(text))
    op = rng.choice(["sub", "ins", "del"] if len(text) > 3 else ["sub", "ins"])
    if op == "sub":
        return text[:i] + rng.choice(DIGITS) + text[i + 1:]
    if op == "ins":
        return text[:i] + rng.choice(DIGITS) + text[i:]
    return text[:i] + text[i + 1:]


def draft_answer(rng: random.Random, row: dict, hidden: bool, edit_rate: float = 0.6) -> str:
    """An imperfect direct answer: meets the stated constraints up to a few random edits; a
    hidden ending is met only by chance."""
    text = row["solution"]
    if hidden:
        text = text[:-1] + rng.choice(DIGITS)
    if rng.random() < edit_rate:
        for _ in range(rng.randint(1, 2)):
            text = _edit(rng, text)
    return text


def render_revision(row: dict, draft: str, verdicts: list[bool]) -> str:
    met = [c["description"] for c, v in zip(row["rubric"], verdicts) if v]
    unmet = [c["description"] for c, v in zip(row["rubric"], verdicts) if not v]
    return REVISE_TEMPLATE.format(instruction=row["prompt"], draft=draft,
                                  met_list=", ".join(met), unmet_list=", ".join(unmet))


def sft_example(rng: random.Random, held: set[str], revise_share: float = 0.5) -> dict:
    """One demonstration ``{prompt, answer}``: a direct answer or a revision of a failed draft.
    Both variants appear; in revisions the ending digit is random, not the tag's."""
    hidden = rng.random() < 0.5
    while True:
        revise = rng.random() < revise_share
        row = make_row(rng, hidden, end=rng.choice(DIGITS) if revise else None)
        if row["prompt"] in held:
            continue
        draft = draft_answer(rng, row, hidden)
        if not revise:
            return {"prompt": row["prompt"], "answer": draft}
        verdicts = [_met(draft, c) for c in row["rubric"]]
        if not all(verdicts):
            return {"prompt": render_revision(row, draft, verdicts), "answer": row["solution"]}

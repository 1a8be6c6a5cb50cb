"""The built-in rubric task: digit strings under several rule-checked constraints.

A prompt such as ``[b] 5 digits, starts 3, has 7:`` asks for a digit string meeting the stated
constraints. In the ``hidden`` variant (``rubric``) the grader also applies one criterion the
prompt does not state: the answer must end with the digit its tag names (a->1, b->4, c->7, d->0).
That rule is learnable, but a policy only finds it by chance or by being told, which is the
regime of rubric-judged tasks where hindsight can matter. In the ``stated`` variant
(``rubric_stated``) the same criterion is written in the prompt. In the ``rare`` variant
(``rubric_rare``) the prompt states easy constraints (the length and one or two more) and the
hidden criterion is a two-digit ending named by the tag (a->13, b->46, c->79, d->02): met by
chance about one time in a hundred, so a policy's own samples almost never show it the way.

The SFT warm start (:func:`sft_example`) teaches two modes: imperfect direct answers (which
ignore the tag) and revisions (draft + met and unmet criteria -> an answer meeting them all, close
to the draft). In the revision examples the ending criterion names a random digit, so the only
way to meet it is to read the lists. :func:`rare_sft_example` does the same for the rare variant
(a second warm start, ``model=tiny-rare``), with direct answers that usually meet the stated
constraints.
"""

from __future__ import annotations

import random

from explorl.errors import UserError
from explorl.rewards.rubric import RULES

TAGS = {"a": "1", "b": "4", "c": "7", "d": "0"}
RARE_TAGS = {"a": "13", "b": "46", "c": "79", "d": "02"}
DIGITS = "0123456789"
TRAIN_SEED, HELDOUT_SEED = 4321, 8765
REVISE_TEMPLATE = "revise {instruction}\nmet: {met_list}\nunmet: {unmet_list}\ndraft: {draft}\nfix:"
"""The compact hindsight prompt the shipped model was warm-started on."""
VARIANTS = {"rubric": "hidden", "rubric_stated": "stated", "rubric_rare": "rare"}


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


def _constraints(rng: random.Random, end: str, most: int = 3,
                 has_from: int = 1) -> tuple[str, list[tuple[str, object]]]:
    """A solution ending in ``end`` and the stated constraints it meets: its length, then 1 to
    ``most`` of starts/has/no, none about the ending. The ``has`` digit is drawn from the
    solution's digits from index ``has_from`` up to its ending."""
    n = rng.randint(4, 7)
    solution = "".join(rng.choice(DIGITS) for _ in range(n - len(end))) + end
    stated: list[tuple[str, object]] = [("len", n)]
    for kind in rng.sample(["starts", "has", "no"], rng.randint(1, most)):
        if kind == "starts":
            stated.append(("starts", solution[0]))
        elif kind == "has":
            stated.append(("has", rng.choice(solution[has_from:-len(end)])))
        else:
            absent = [d for d in DIGITS if d not in solution]
            if absent:
                stated.append(("no", rng.choice(absent)))
    return solution, stated


def make_row(rng: random.Random, variant: str, end: str | None = None) -> dict:
    """One prompt of ``variant`` (``hidden``, ``stated`` or ``rare``); ``end``: the ending to
    ask for instead of the tag's (the warm start's revision examples)."""
    tag = rng.choice(sorted(TAGS))
    if variant == "rare":
        end = end if end is not None else RARE_TAGS[tag]
        solution, stated = _constraints(rng, end, most=2, has_from=0)
    else:
        end = end if end is not None else TAGS[tag]
        solution, stated = _constraints(rng, end)
    shown = stated + [("ends", end)] if variant == "stated" else stated
    prompt = f"[{tag}] " + ", ".join(_criterion(k, v)["description"] for k, v in shown) + ":"
    rubric = [_criterion(k, v) for k, v in stated + [("ends", end)]]
    return {"prompt": prompt, "rubric": rubric, "solution": solution, "prompt_id": prompt,
            "level": f"{len(rubric)} criteria"}


def splits(train_size: int, heldout_size: int, variant: str = "hidden") -> tuple[list, list]:
    """Train and held-out rows of ``variant``; no prompt is in both."""
    rng = random.Random(HELDOUT_SEED)
    heldout, held, tries = [], set(), 0
    while len(heldout) < heldout_size:
        tries += 1
        if tries > 100 * heldout_size:  # the variant has fewer distinct prompts than asked for
            raise UserError(f"eval_size: {heldout_size} distinct held-out prompts asked of the "
                            f"rubric task's {variant} variant, which gave only {len(heldout)}")
        row = make_row(rng, variant)
        if row["prompt"] not in held:
            held.add(row["prompt"])
            heldout.append(row)
    rng = random.Random(TRAIN_SEED)
    train = []
    while len(train) < train_size:
        row = make_row(rng, variant)
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


def draft_answer(rng: random.Random, row: dict, hidden: bool, edit_rate: float = 0.6,
                 hidden_digits: int = 1) -> str:
    """An imperfect direct answer: meets the stated constraints up to a few random edits; a
    hidden ending (of ``hidden_digits`` digits) is met only by chance."""
    text = row["solution"]
    if hidden:
        text = text[:-hidden_digits] + "".join(rng.choice(DIGITS) for _ in range(hidden_digits))
    if rng.random() < edit_rate:
        for _ in range(rng.randint(1, 2)):
            text = _edit(rng, text)
    return text


def render_revision(row: dict, draft: str, verdicts: list[bool]) -> str:
    met = [c["description"] for c, v in zip(row["rubric"], verdicts) if v]
    unmet = [c["description"] for c, v in zip(row["rubric"], verdicts) if not v]
    return REVISE_TEMPLATE.format(instruction=row["prompt"], draft=draft,
                                  met_list=", ".join(met), unmet_list=", ".join(unmet))


def _demonstration(row: dict, draft: str, revise: bool) -> dict | None:
    """The draft as a direct answer, or (``revise``) the revision of a draft that missed a
    criterion; None for a draft that met them all (nothing to revise)."""
    if not revise:
        return {"prompt": row["prompt"], "answer": draft}
    verdicts = [_met(draft, c) for c in row["rubric"]]
    if all(verdicts):
        return None
    return {"prompt": render_revision(row, draft, verdicts), "answer": row["solution"]}


def sft_example(rng: random.Random, held: set[str], revise_share: float = 0.5) -> dict:
    """One demonstration ``{prompt, answer}``: a direct answer or a revision of a failed draft.
    Both variants appear; in revisions the ending digit is random, not the tag's."""
    hidden = rng.random() < 0.5
    while True:
        revise = rng.random() < revise_share
        row = make_row(rng, "hidden" if hidden else "stated",
                       end=rng.choice(DIGITS) if revise else None)
        if row["prompt"] in held:
            continue
        example = _demonstration(row, draft_answer(rng, row, hidden), revise)
        if example:
            return example


def rare_sft_example(rng: random.Random, held: set[str], revise_share: float = 0.5,
                     edit_rate: float = 0.15) -> dict:
    """A demonstration of the rare variant: a direct answer that usually meets the stated
    constraints (the hidden two-digit ending by chance), or a revision whose ending is two random
    digits that only the unmet list names."""
    while True:
        revise = rng.random() < revise_share
        end = "".join(rng.choice(DIGITS) for _ in range(2)) if revise else None
        row = make_row(rng, "rare", end=end)
        if row["prompt"] in held:
            continue
        example = _demonstration(row, draft_answer(rng, row, True, edit_rate, hidden_digits=2),
                                 revise)
        if example:
            return example

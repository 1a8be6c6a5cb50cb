import pytest

pytest.importorskip("champ_dataset")

from explorl.data.champ import (  # noqa: E402 - after the skip on a missing package
    KINDS,
    champ_reward,
    champ_rows,
    classify_answer,
    final_yes_no,
)
from explorl.data.loaders import columns_of, load_rows  # noqa: E402
from explorl.errors import UserError  # noqa: E402


def rewards(rows, completions):
    return champ_reward([r["prompt"] for r in rows], completions, **columns_of(rows))


@pytest.fixture(scope="module")
def all_rows():
    return champ_rows(kinds=KINDS)


def test_all_270_problems_load_offline_with_hints(all_rows):
    assert len(all_rows) == 270
    assert {r["answer_kind"] for r in all_rows} == set(KINDS)
    assert len({r["prompt_id"] for r in all_rows}) == 270
    assert all(r["prompt"].endswith("\\boxed{}.") for r in all_rows)
    assert sum(bool(r["hints"]) for r in all_rows) == 245
    assert load_rows(all_rows) == all_rows  # already in the loaders' normal form


def test_default_rows_are_the_rule_checkable_math_answers():
    rows = champ_rows()
    assert len(rows) == 180
    assert {r["answer_kind"] for r in rows} == {"math"}


def test_hints_in_prompt_are_numbered():
    row = champ_rows(with_hints=True)[0]
    assert "You may find the following information useful:" in row["prompt"]
    assert f"1. {row['hints'][0]}" in row["prompt"]
    assert row["concepts"][0] not in row["prompt"]


@pytest.mark.parametrize("answer, kind, truth", [
    ("239", "math", "\\boxed{239}"),
    ("C(10, 5), or equivalently 252", "math", "\\boxed{252}"),
    ("100 (i.e., all values)", "math", "\\boxed{100}"),
    ("0 is the only possible value", "math", "\\boxed{0}"),
    ("The limit exists and is equal to 2/3", "math", "\\boxed{\\frac{2}{3}}"),
    ("2^(n-1)", "math", "\\boxed{2^{n - 1}}"),
    ("No", "yes_no", "No"),
    ("No integer solutions", "free", None),
    ("x=6, y=5", "free", None),
    ("sum_(k=1)^n 1/k", "free", None),
])
def test_classify_answer(answer, kind, truth):
    assert classify_answer(answer) == (kind, truth)


def test_every_math_answer_scores_one_and_a_shifted_one_zero(all_rows):
    rows = [r for r in all_rows if r["answer_kind"] == "math"]
    right = [f"So the answer is {r['ground_truth']}" for r in rows]
    wrong = [f"So the answer is \\boxed{{{r['ground_truth'][7:-1]} + 1}}" for r in rows]
    assert rewards(rows, right) == [1.0] * len(rows)
    assert rewards(rows, wrong) == [0.0] * len(rows)


@pytest.mark.parametrize("answer, completion", [
    ("2^(n-1)", "\\boxed{2^{n-1}}"),
    ("C(10, 5), or equivalently 252", "\\boxed{\\binom{10}{5}}"),
    ("sqrt(3)/3, or equivalently 1/sqrt(3)", "$\\boxed{\\frac{1}{\\sqrt{3}}}$"),
    ("n(n-3)/2", "\\boxed{\\frac{n^2-3n}{2}}"),
])
def test_equivalent_forms_score_one(answer, completion):
    kind, truth = classify_answer(answer)
    assert champ_reward(["q"], [completion], answer_kind=[kind], ground_truth=[truth]) == [1.0]


def test_yes_no_and_free_rows(all_rows):
    yes_no = next(r for r in all_rows if r["answer_kind"] == "yes_no")
    free = next(r for r in all_rows if r["answer_kind"] == "free")
    truth = yes_no["ground_truth"]
    other = "No" if truth == "Yes" else "Yes"
    rows = [yes_no, yes_no, yes_no, free]
    completions = [f"... so \\boxed{{\\text{{{truth}}}}}", f"Thus:\n{other}.", "", "anything"]
    assert rewards(rows, completions) == [1.0, 0.0, 0.0, None]


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{Yes}", "yes"), ("\\boxed{\\text{no}}", "no"), ("work\n\nNo, it cannot.", "no"),
    ("\\boxed{3}", None), ([{"role": "assistant", "content": "Yes"}], "yes"),
])
def test_final_yes_no(text, expected):
    assert final_yes_no(text) == expected


def test_unknown_kind_is_a_user_error():
    with pytest.raises(UserError, match="champ: unknown answer kinds"):
        champ_rows(kinds=("math", "proof"))

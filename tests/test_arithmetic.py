"""The built-in arithmetic task: splits, checker, buggy procedures."""

from explorl.data import arithmetic


def test_splits_are_disjoint_deterministic_and_mixed():
    train, held = arithmetic.splits(4000, 500)
    assert len(train) == 4000 and len(held) == 500
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert arithmetic.splits(4000, 500) == (train, held)
    assert {r["level"] for r in held} == set(arithmetic.LEVELS)
    for r in held[:200]:
        a = r["prompt"].rstrip("=")
        assert str(eval(a)) == r["answer"]  # noqa: S307 - our own generated expressions


def test_exact_match_reward():
    got = arithmetic.exact_match_reward(["1+1="] * 4, ["2", " 2 ", "3", [{"content": "2"}]],
                                        answer=["2", "2", "2", "2"])
    assert got == [1.0, 1.0, 0.0, 1.0]


def test_buggy_procedures_hand_worked():
    assert arithmetic.buggy_answer("37+48=") == "75"    # 7+8=15 -> 5, carry dropped
    assert arithmetic.buggy_answer("95+17=") == "102"   # leftmost column kept whole: 10, 2
    assert arithmetic.buggy_answer("37+8+5=") == "30"   # 7+8+5 = 20 -> 0; tens 3
    assert arithmetic.buggy_answer("763+89=") == "742"
    assert arithmetic.buggy_answer("12+13=") == "25"    # no carry: the true answer
    assert arithmetic.buggy_answer("7+8=") == "15"      # one column: kept whole
    assert arithmetic.buggy_answer("52-19=") == "33"    # other operations: answered right
    assert arithmetic.buggy_answer("23*4=") == "92"

"""The unbiased pass@k estimator against its closed form."""

from math import comb

import pytest

from explorl.evaluation import pass_at_k


@pytest.mark.parametrize("n,c,k", [(5, 2, 2), (16, 3, 4), (16, 0, 8), (16, 16, 1), (10, 1, 10),
                                   (20, 7, 1), (8, 5, 4)])
def test_matches_binomial_closed_form(n, c, k):
    want = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_hand_worked_and_edges():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(20, 7, 1) == pytest.approx(7 / 20)
    assert pass_at_k(4, 0, 4) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)

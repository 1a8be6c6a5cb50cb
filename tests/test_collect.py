"""Collecting: generate and score as one batch; shares of a request joined in order."""

import math

import torch

from explorl.data.prompts import PromptCodec
from explorl.distributed import Parallel
from explorl.models.policy import load_tokenizer
from explorl.rewards.base import Rewards, Scorer
from explorl.rollout.collect import Collector
from explorl.rollout.engine import Rollout, left_pad


def rollout(prompts, completions, groups, pad=0):
    ids, mask = left_pad(prompts, pad)
    width = max(len(c) for c in completions)
    cids = torch.full((len(completions), width), pad)
    cmask = torch.zeros_like(cids)
    for i, c in enumerate(completions):
        cids[i, : len(c)], cmask[i, : len(c)] = torch.tensor(c), 1
    n = len(completions)
    return Rollout(ids, mask, cids, cmask, torch.full((n,), 0.5), torch.tensor(groups),
                   torch.tensor([False] * n))


def test_rollouts_of_different_widths_join_row_by_row():
    a = rollout([[5, 6, 7]], [[1]], [0])
    b = rollout([[8], [9, 9]], [[2, 3, 4], [5]], [1, 1])
    joined = Rollout.concat([a, Rollout.empty(), b], pad_id=0)
    assert joined.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 9]]
    assert joined.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert joined.completions() == [[1], [2, 3, 4], [5]]
    assert [joined.prompt(i) for i in range(3)] == [[5, 6, 7], [8], [9, 9]]
    assert joined.group_ids.tolist() == [0, 1, 1]
    picked = joined.select([2, 0])
    assert picked.completions() == [[5], [1]] and picked.group_ids.tolist() == [1, 0]


def test_rewards_join_with_their_counts_and_grades():
    one = Rewards(torch.tensor([1.0]), {"f": torch.tensor([1.0])}, 0, [], ["g0"], 0)
    two = Rewards(torch.tensor([math.nan, 0.0]), {"f": torch.tensor([math.nan, 0.0])}, 1,
                  ["f: boom"], ["g1", "g2"], 1)
    joined = Rewards.concat([one, two])
    assert joined.total.tolist()[0] == 1.0 and math.isnan(joined.total.tolist()[1])
    assert (joined.masked, joined.failed, joined.errors) == (1, 1, ["f: boom"])
    assert joined.grades == ["g0", "g1", "g2"]


class Scripted:
    """An engine that answers every prompt with its own first token, then EOS."""

    def __init__(self, eos):
        self.eos = eos

    def generate(self, prompts, num_samples, temperatures, max_new_tokens):
        rows = [(g, p) for g, (p, n) in enumerate(zip(prompts, num_samples)) for _ in range(n)]
        out = rollout([p for _, p in rows], [[p[0], self.eos] for _, p in rows],
                      [g for g, _ in rows])
        out.temperatures = torch.tensor([temperatures[g] for g, _ in rows])
        return out

    def greedy(self, prompts, max_new_tokens):
        return [[p[0]] for p in prompts]


def test_collect_scores_each_sample_against_its_own_row():
    tok = load_tokenizer("tiny")
    codec = PromptCodec(tok)
    rows = [{"prompt": "1+1=", "answer": "1"}, {"prompt": "2+2=", "answer": "1"}]

    def first_char_is_answer(prompts, completions, answer, **_):
        return [float(c == a) for c, a in zip(completions, answer)]

    scorer = Scorer([("first", first_char_is_answer)], [1.0], codec)
    collect = Collector(Scripted(tok.eos_token_id), scorer, tok, Parallel())
    batch = collect(rows, [codec.encode(r["prompt"]) for r in rows], [2, 3], [0.5, 1.5], 4)
    assert batch.texts == ["1"] * 2 + ["2"] * 3
    assert batch.rewards.total.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert batch.passed.tolist() == [True, True, False, False, False]
    assert batch.passes_by_prompt() == [[True, True], [False, False, False]]
    assert batch.rollout.temperatures.tolist() == [0.5, 0.5, 1.5, 1.5, 1.5]
    assert batch.generated_tokens == 10 and set(batch.seconds) == {"generate", "reward"}

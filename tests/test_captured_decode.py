"""The captured decode step (``compile_decode=True``): the fast engine's per-token forward
compiled over a static cache gives the tokens the eager engine and ``generate`` give, and
sampled log-probs the trainer agrees with."""

import pytest
import torch

from explorl.config import load_config
from explorl.data.arithmetic import splits
from explorl.data.prompts import PromptCodec
from explorl.errors import UserError
from explorl.models.policy import completion_logprobs, load_model, load_tokenizer
from explorl.rollout.engine import HFEngine
from explorl.rollout.fast import FastEngine
from tests.test_fast_engine import LOGP_ATOL  # the compiled kernels only reorder sums too

ROWS, NEW = 16, 12  # one static shape for every test here: one compilation


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


@pytest.fixture(scope="module")
def captured(model, tok):
    return FastEngine(model, tok, compile_decode=True)


@pytest.fixture(scope="module")
def prompts(tok):
    codec = PromptCodec(tok)
    return [codec.encode(r["prompt"]) for r in splits(ROWS, 0)[0]]


def test_greedy_equals_the_eager_engine_and_generate(model, tok, captured, prompts):
    eager = FastEngine(model, tok).greedy(prompts, NEW)
    assert captured.greedy(prompts, NEW) == eager
    assert HFEngine(model, tok).greedy(prompts, NEW) == eager
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    assert len({len(c) for c in eager}) > 1  # rows finish at different steps
    short = FastEngine(model, tok).greedy(prompts, 3)  # cut off: the same static shape
    assert captured.greedy(prompts, 3) == short and any(len(c) == 3 for c in short)


def test_sampled_logprobs_are_the_trainers(model, captured, prompts):
    torch.manual_seed(0)
    groups = ROWS // 4
    rollout = captured.generate(prompts[:groups], [4] * groups, [0.7, 1.0, 1.3, 1.0], NEW)
    recorded = rollout.sampling_logps
    stats = completion_logprobs(model, rollout.prompt_ids, rollout.prompt_mask,
                                rollout.completion_ids, rollout.completion_mask,
                                rollout.temperatures)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(recorded[mask], stats.logps.detach()[mask], rtol=0,
                               atol=LOGP_ATOL)
    assert (recorded[~mask] == 0).all()  # rows kept in the batch after EOS record nothing
    assert (~mask).any() and rollout.truncated.sum() < len(rollout)


def test_a_second_call_of_the_same_shape_compiles_nothing(captured, prompts):
    from torch._dynamo.utils import counters

    captured.greedy(prompts, NEW)
    frames = counters["stats"]["unique_graphs"]
    captured.greedy(prompts[:ROWS - 3], NEW)  # 13 rows: rounded up to the same 16
    assert counters["stats"]["unique_graphs"] == frames


def test_the_captured_step_reads_the_weights_an_update_left(model, tok, captured, prompts):
    """RL changes the weights in place between rollouts: the compiled step must see them."""
    before = captured.greedy(prompts, NEW)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            torch.manual_seed(1)
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        changed = FastEngine(model, tok).greedy(prompts, NEW)
        assert changed != before  # the perturbation matters
        assert captured.greedy(prompts, NEW) == changed
    finally:
        model.load_state_dict(saved)


def test_compile_decode_is_refused_with_the_hf_engine():
    with pytest.raises(UserError, match="compile_decode"):
        load_config(None, ["engine=hf", "compile_decode=true"])

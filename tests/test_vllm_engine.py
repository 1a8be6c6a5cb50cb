"""engine=vllm against the real vLLM (the CPU build, ``scripts/vllm_tests.sh``): the same greedy
output as ``generate``, the trainer's log-probs after weight pushes (tied and untied output
layers, LoRA), a GRPO run that learns, HeRL's revisions and E3's budgets through it, evaluation,
sampling and test-time revision, and its bad input. Skipped where vLLM is not installed."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from explorl import TrainConfig, Trainer
from explorl.cli import main
from explorl.config import E3Config, HeRLConfig
from explorl.data.arithmetic import splits
from explorl.data.prompts import PromptCodec
from explorl.errors import UserError
from explorl.models import lora
from explorl.models.policy import completion_logprobs, load_model, load_tokenizer
from explorl.models.tiny import tiny_config
from explorl.rollout.engine import greedy
from explorl.rollout.fast import FastEngine
from tests.helpers.rewards import starts_with_one
from tests.test_fast_engine import LOGP_ATOL, nucleus_logps

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

VLLMEngine = pytest.importorskip("explorl.rollout.vllm").VLLMEngine
FAST = dict(eval_size=40, progress=False, plots=False, task_train_size=400, engine="vllm")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def prompts(tok):
    codec = PromptCodec(tok)
    return [codec.encode(r["prompt"]) for r in splits(24, 0)[0]]


def untied(tok):
    config = tiny_config(len(tok))
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def assert_logps_are_the_trainers(model, engine, prompts):
    torch.manual_seed(0)
    r = engine.generate(prompts[:6], [3] * 6, [0.7, 1.0, 1.3, 1.0, 0.9, 1.1], 10)
    with torch.no_grad():
        want = completion_logprobs(model.eval(), r.prompt_ids, r.prompt_mask,
                                   r.completion_ids, r.completion_mask, r.temperatures).logps
    mask = r.completion_mask.bool()
    assert mask.sum() > 30
    torch.testing.assert_close(r.sampling_logps[mask], want[mask], rtol=0, atol=LOGP_ATOL)
    assert (r.sampling_logps[~mask] == 0).all()


def nudge(params, scale):
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn_like(p))


def test_greedy_is_generates(tok, prompts):
    model = load_model("tiny")
    engine = VLLMEngine(model, tok, max_model_length=128)
    want = greedy(model, tok, prompts, 12)
    assert engine.greedy(prompts, 12) == want
    assert len({len(c) for c in want}) > 1  # rows stop at different lengths


@pytest.mark.parametrize("build", ["tied", "untied"])
def test_sampled_log_probs_are_the_trainers_after_pushes(tok, prompts, build):
    model = load_model("tiny") if build == "tied" else untied(tok)
    engine = VLLMEngine(model, tok, max_model_length=128)
    assert_logps_are_the_trainers(model, engine, prompts)
    # an optimizer step as the trainer takes it: fused AdamW, in place
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model.train()
    ids = torch.tensor([prompts[0]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert engine.sync() and not engine.sync()  # pushed once, then nothing new
    assert_logps_are_the_trainers(model, engine, prompts)
    assert engine.greedy(prompts, 12) == FastEngine(model, tok).greedy(prompts, 12)


def test_sampled_log_probs_under_top_p_are_the_nucleus(tok, prompts):
    model = untied(tok)  # random: a small nucleus at top_p 0.5
    engine = VLLMEngine(model, tok, top_p=0.5, max_model_length=128)
    torch.manual_seed(0)
    r = engine.generate(prompts[:3], [4, 2, 3], [0.7, 1.0, 1.3], 8)
    mask = r.completion_mask.bool()
    torch.testing.assert_close(r.sampling_logps[mask], nucleus_logps(model, r, 0.5)[mask],
                               rtol=0, atol=LOGP_ATOL)


def test_lora_pushes_the_adapted_layers_folded(tok, prompts):
    model = lora.apply_lora(load_model("tiny"), r=4)
    engine = VLLMEngine(model, tok, max_model_length=128)
    nudge([p for n, p in model.named_parameters() if "lora_B" in n], 0.2)
    assert engine.sync()
    assert_logps_are_the_trainers(model, engine, prompts)
    assert engine.greedy(prompts, 12) == FastEngine(model, tok).greedy(prompts, 12)


def rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_learns_through_vllm(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=30, learning_rate=1e-3,
                      reward_funcs=[starts_with_one], warmup_steps=0, **FAST)
    Trainer(cfg).train()
    metrics = rows(tmp_path / "run")
    first = sum(r["reward/mean"] for r in metrics[:5]) / 5
    last = sum(r["reward/mean"] for r in metrics[-5:]) / 5
    assert first < 0.5 and last > first + 0.3, (first, last)
    # the weights were pushed every step: the engine samples what the trainer scores
    assert max(r["mismatch/kl"] for r in metrics) < 1e-6


def test_herl_revisions_and_e3_budgets_through_vllm(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), method="herl+e3", max_steps=4,
                      prompts_per_step=8, num_generations=4, save_every=0, eval_every=0,
                      herl=HeRLConfig(teach="revise", accept="equal"),
                      e3=E3Config(budget_min=2, budget_max=6), **{**FAST, "eval_size": 8})
    Trainer(cfg).train()
    metrics = rows(tmp_path / "run")
    assert sum(r["herl/revisions"] for r in metrics) > 0
    counts = [c for r in metrics[1:] for c in r["samples_per_prompt"]]
    assert min(counts) < max(counts) and sum(metrics[-1]["samples_per_prompt"]) == 8 * 4


def test_eval_sample_and_improve_commands(tmp_path, capsys):
    args = ["tiny", "--size", "24", "--max-new-tokens", "12"]
    results = {}
    for engine in ("fast", "vllm"):
        assert main(["eval", *args, "--json", "--pass-k", "1,2", "--engine", engine]) == 0
        results[engine] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["vllm"]["accuracy"] == results["fast"]["accuracy"]  # greedy: same tokens
    assert 0 <= results["vllm"]["pass_at_k"]["1"] <= results["vllm"]["pass_at_k"]["2"] <= 1
    out = tmp_path / "samples.jsonl"
    assert main(["sample", *args, "--n", "3", "--out", str(out), "--engine", "vllm"]) == 0
    assert len(out.read_text().splitlines()) == 24 * 3
    improved = {}
    for engine in ("fast", "vllm"):
        assert main(["improve", "tiny", "--size", "24", "--rounds", "2", "--json",
                     "--engine", engine]) == 0
        improved[engine] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert improved["vllm"]["success_by_round"] == improved["fast"]["success_by_round"]


def test_resume_with_vllm_pushes_the_loaded_weights(tmp_path):
    def cfg(name, steps):
        return TrainConfig(output_dir=str(tmp_path / name), max_steps=steps, save_every=2,
                           prompts_per_step=8, num_generations=4, learning_rate=1e-3,
                           **{**FAST, "eval_size": 8})

    Trainer(cfg("a", 2)).train()
    resumed = Trainer(cfg("a", 4))
    resumed.train()
    assert [r["step"] for r in rows(tmp_path / "a")][-2:] == [3, 4]
    assert max(r["mismatch/kl"] for r in rows(tmp_path / "a")) < 1e-6


@pytest.mark.parametrize("overrides,says", [
    (dict(vllm_kv_cache_gb=100000.0), "vllm_kv_cache_gb: 100000 GiB of KV cache does not fit"),
    (dict(vllm_max_model_length=100000), "vllm_max_model_length: vLLM cannot serve model=tiny "
                                         "(User-specified max_model_len (100000) is greater"),
])
def test_bad_input_is_one_line(tmp_path, overrides, says):
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        Trainer(TrainConfig(output_dir=str(out), **FAST, **overrides))
    assert str(e.value).startswith(says) and "\n" not in str(e.value) and not out.exists()


def test_a_model_vllm_cannot_load_is_one_line(tmp_path, tok, capsys):
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    folder = tmp_path / "gpt"
    OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=len(tok), n_positions=64, n_embd=32,
                                         n_layer=1, n_head=2)).save_pretrained(folder)
    tok.save_pretrained(folder)
    code = main(["train", f"model={folder}", f"output_dir={tmp_path / 'run'}", "engine=vllm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "run").exists()
    assert err[-1].startswith(f"explorl: error: model: vLLM cannot serve model={folder} (Model "
                              "architectures ['OpenAIGPTLMHeadModel'] are not supported")


def test_calculator_episodes_through_vllm_are_the_fast_engines(tmp_path):
    """Greedy multi-turn episodes (stop at the call's ']', the tool's answer appended, the
    model going on) give the same held-out results through vLLM as through the fast engine."""
    results = {}
    for engine in ("fast", "vllm"):
        trainer = Trainer(TrainConfig(model="tiny-tools", dataset="calculator", engine=engine,
                                      output_dir=str(tmp_path / engine), eval_size=64,
                                      max_completion_length=32, task_train_size=32))
        results[engine] = trainer.evaluate("before")
    assert results["vllm"] == results["fast"]
    assert results["vllm"]["call_rate"] > 0

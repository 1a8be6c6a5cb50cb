"""End-to-end training runs on the shipped tiny model: learning happens, files are right."""

import json

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.config import E3Config, EntropyConfig, HeRLConfig
from tests.helpers.resume import straight_and_resumed
from tests.helpers.rewards import starts_with_one

FAST = dict(eval_size=40, progress=False, plots=False, task_train_size=400)


def test_grpo_learns_a_trivial_reward_and_changes_parameters(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=30, learning_rate=1e-3,
                      reward_funcs=[starts_with_one], warmup_steps=0, **FAST)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward/mean"] for r in rows[:5]) / 5
    last = sum(r["reward/mean"] for r in rows[-5:]) / 5
    assert first < 0.5 and last > first + 0.3, (first, last)


@pytest.mark.parametrize("overrides", [
    dict(loss_type="grpo"),
    dict(loss_type="dr_grpo", advantage_estimator="dr_grpo", scale_rewards="none"),
    dict(advantage_estimator="rloo", scale_rewards="batch", num_iterations=2, dual_clip=3.0,
         epsilon_high=0.28, micro_batch_size=48),
    dict(beta=0.05, kl_estimator="k1", entropy=EntropyConfig(coef=0.01),
         mask_truncated_completions=True),
])
def test_variants_run_and_report_metrics(tmp_path, overrides):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=4,
                      num_generations=4, save_every=0, **FAST, **overrides)
    Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/mean", "reward/std", "reward/arithmetic/mean", "accuracy",
                "frac_zero_std_groups", "entropy", "kl", "clip_fraction",
                "completion_length/mean", "tokens/generated", "time/generate", "time/reward",
                "time/update"):
        assert key in rows[0], key
    if overrides.get("beta"):
        assert abs(rows[0]["kl"]) < 1e-6  # step 1: the policy is the reference
        assert rows[1]["kl"] != 0  # k1 may be negative; after one update it is not zero
    if overrides.get("num_iterations") == 2:
        assert rows[0]["clip_fraction"] >= 0


def test_same_seed_same_run(tmp_path):
    def run(name):
        cfg = TrainConfig(output_dir=str(tmp_path / name), max_steps=3, prompts_per_step=4,
                          num_generations=4, **FAST)
        Trainer(cfg).train()
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text()
                .splitlines()]

    a, b = run("a"), run("b")
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [drop(r) for r in a] == [drop(r) for r in b]


def test_per_prompt_counts_and_temperatures(tmp_path):
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path / "r"), **FAST))
    prompts = trainer.prompt_ids[:3]
    out = trainer.engine.generate(prompts, [1, 5, 2], [0.5, 1.0, 2.0], 6)
    assert out.group_ids.tolist() == [0, 1, 1, 1, 1, 1, 2, 2]
    assert out.temperatures.tolist() == [0.5] + [1.0] * 5 + [2.0] * 2
    assert out.completion_ids.shape[0] == 8
    # the completion mask ends at the first EOS; truncated rows have no EOS
    eos = trainer.tokenizer.eos_token_id
    for ids, mask, trunc in zip(out.completion_ids, out.completion_mask, out.truncated):
        n = int(mask.sum())
        assert bool(trunc) == (eos not in ids[:n].tolist())
        if not trunc:
            assert ids[n - 1] == eos


@pytest.mark.parametrize("extra", [
    {},
    # HeRL's slot choice and E3's difficulty statistics and temperature must survive too
    dict(method="herl+e3", herl=HeRLConfig(accept="equal", teach="revise"),
         e3=E3Config(budget_min=2, budget_max=6),
         entropy=EntropyConfig(target_steps=1)),
])
def test_resume_continues_exactly(tmp_path, extra):
    def cfg(name, steps):
        return TrainConfig(output_dir=str(tmp_path / name), max_steps=steps, save_every=2,
                           prompts_per_step=8, num_generations=4, warmup_steps=2, **FAST,
                           **extra)

    a, b, straight, resumed = straight_and_resumed(cfg, tmp_path)
    assert a == b
    assert sum(r["grad_norm"] > 0 for r in a) >= 2  # the weights did move
    if extra:
        assert sum(r["herl/replaced"] for r in a[2:]) > 0  # after the resume point
        assert len({r["temperature"] for r in a}) > 1
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_bring_your_own_model_data_and_reward(tmp_path):
    """A saved HF model with a chat template, conversational JSONL data, a module:function
    reward with a data column, two weighted reward functions."""
    from transformers import Qwen2ForCausalLM

    from explorl.models.tiny import char_tokenizer, tiny_config

    tok = char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}>{% endif %}")
    torch.manual_seed(0)
    Qwen2ForCausalLM(tiny_config(len(tok), hidden=32, layers=1)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{i}+1="}],
                                        "answer": str(i + 1)}) + "\n" for i in range(8)))
    seen = {}

    def spy(prompts, completions, completion_ids=None, **columns):
        seen.update(prompts=prompts, completions=completions, columns=columns)
        return [0.5] * len(completions)

    cfg = TrainConfig(model=str(tmp_path / "m"), dataset=str(data), eval_dataset=str(data),
                      reward_funcs=["arithmetic", spy, spy], reward_weights=[1.0, 2.0, 0.0],
                      output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=2,
                      num_generations=3, max_completion_length=4, **FAST)
    trainer = Trainer(cfg)
    assert trainer.tokenizer.decode(trainer.prompt_ids[0]) == "0+1=>"  # template applied
    summary = trainer.train()
    assert seen["prompts"][0][0]["role"] == "user"
    assert seen["completions"][0][0]["role"] == "assistant"  # conversational completions
    assert set(seen["columns"]) >= {"answer", "prompt_id"}
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # weighted sum: 1.0 * exact match + 2.0 * 0.5
    assert rows[0]["reward/mean"] == pytest.approx(1.0 + rows[0]["reward/arithmetic/mean"])
    assert rows[0]["reward/spy/mean"] == rows[0]["reward/spy_2/mean"] == 0.5
    assert summary["before"]["n"] == 8


def test_pass_at_k_before_and_after(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "r"), max_steps=1, prompts_per_step=2,
                      num_generations=2, eval_pass_k=[1, 4], save_every=0, **FAST)
    summary = Trainer(cfg).train()
    for when in ("before", "after"):
        p = summary[when]["pass_at_k"]
        assert set(p) == {"1", "4"} and 0 <= p["1"] <= p["4"] <= 1
        assert summary[when]["avg_at_4"] == pytest.approx(p["1"])  # pass@1 is avg@n


def test_an_injected_engine_serves_training_and_evaluation(tmp_path):
    from explorl.rollout.engine import HFEngine

    calls = []

    class Counting(HFEngine):
        def generate(self, prompts, num_samples, temperatures, max_new_tokens):
            calls.append(("generate", sum(num_samples)))
            return super().generate(prompts, num_samples, temperatures, max_new_tokens)

        def greedy(self, prompts, max_new_tokens):
            calls.append(("greedy", len(prompts)))
            return super().greedy(prompts, max_new_tokens)

    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=4,
                      num_generations=4, save_every=0, eval_every=0, **FAST)
    trainer = Trainer(cfg, engine=lambda model, tokenizer: Counting(model, tokenizer))
    trainer.train()
    # evaluation before, two steps of 4 x 4 samples, evaluation after
    assert calls == [("greedy", 40), ("generate", 16), ("generate", 16), ("greedy", 40)]

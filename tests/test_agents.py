"""Multi-turn rollouts: the episode's tokens as sampled and answered, the tools' tokens out of
the loss, rewards over message lists and from the environment, and every fault of a tool or an
environment masked and counted, never fatal. A scripted engine plays the model, so every token
is known."""

import math
import threading
import time

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.agents.formats import TaggedFormat
from explorl.agents.rollout import AgentCollector
from explorl.agents.tools import ToolRunner, check_environment, public_methods
from explorl.batch import Rollout, TrainBatch
from explorl.data.prompts import PromptCodec
from explorl.distributed import Parallel
from explorl.errors import UserError
from explorl.models.policy import load_tokenizer
from explorl.rewards.base import Scorer
from explorl.rollout.engine import completion_mask_from, cut_greedy, left_pad
from tests.helpers.resume import straight_and_resumed

LOGP = -0.5  # what the scripted engine says it sampled each token at


def calc(expression: str) -> str:
    """Evaluates an arithmetic expression.

    Args:
        expression: digits and + - *, e.g. 12*7
    """
    if not set(expression) <= set("0123456789+-* "):
        raise ValueError(f"not arithmetic: {expression!r}")
    return str(eval(expression))  # noqa: S307 - checked to be plain arithmetic above


def answer_is_right(prompts, completions, answer, **_):
    """1 when the last assistant message is the answer."""
    return [float(c[-1]["content"].strip() == a) for c, a in zip(completions, answer)]


class Scripted:
    """Plays the model: ``script(context_text)`` is its next turn; generation stops after a
    stop token or EOS, as an engine's does."""

    gives_sampling_logps = True

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, script, 0

    def generate(self, prompts, num_samples, temperatures, max_new_tokens, stop_ids=()):
        self.calls += 1
        tok = self.tokenizer
        rows = [p for p, n in zip(prompts, num_samples) for _ in range(n)]
        turns = []
        for p in rows:
            text = self.script(tok.decode(p))
            ids = tok(text.replace("<eos>", ""), add_special_tokens=False).input_ids
            turns.append((ids + [tok.eos_token_id] if text.endswith("<eos>") else ids)
                         [:max_new_tokens])
        width = max(len(t) for t in turns)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        for i, t in enumerate(turns):
            ids[i, :len(t)] = torch.tensor(t)
        mask, truncated = completion_mask_from(ids, [tok.eos_token_id, *stop_ids])
        prompt_ids, prompt_mask = left_pad(rows, tok.pad_token_id)
        return Rollout(prompt_ids, prompt_mask, ids.masked_fill(mask == 0, tok.pad_token_id),
                       mask, torch.tensor([float(t) for t in temperatures]),
                       torch.arange(len(rows)), truncated, torch.full(ids.shape, LOGP) * mask)

    def greedy(self, prompts, max_new_tokens, stop_ids=()):
        out = self.generate(prompts, [1] * len(prompts), [1.0] * len(prompts), max_new_tokens,
                            stop_ids)
        return [cut_greedy(row, self.tokenizer.eos_token_id, stop_ids)
                for row in out.completion_ids.tolist()]


def calculator_script(context: str) -> str:
    """Calls calc with the prompt's expression, then says the answer it got."""
    if context.endswith("="):
        return f"[calc:{context.rstrip('=').split()[-1]}]"
    return context.rstrip("\n").split("]")[-1] + "<eos>"  # the tool's answer, repeated


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def collector(tok, script, **kwargs):
    codec = PromptCodec(tok)
    scorer = Scorer([("answer_is_right", answer_is_right)], [1.0], codec)
    defaults = dict(fmt=TaggedFormat(tok), codec=codec, tools=[calc])
    return AgentCollector(Scripted(tok, script), scorer, tok, Parallel("cpu"), "cpu",
                          **{**defaults, **kwargs})


def collect(tok, c, prompts, answers, max_new_tokens=24):
    rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
    ids = [PromptCodec(tok).encode(p) for p in prompts]
    return c(rows, ids, [1] * len(rows), [1.0] * len(rows), max_new_tokens)


def test_an_episode_is_the_model_and_the_tool_token_by_token(tok):
    batch = collect(tok, collector(tok, calculator_script), ["12*7="], ["84"])
    r = batch.rollout
    model, tool = "[calc:12*7]", "84\n"
    text = tok.decode(r.completion_ids[0, : int(r.lengths[0])])
    assert text == model + tool + "84<eos>"
    expected = [1] * len(model) + [0] * len(tool) + [1] * 3  # "84" and EOS are the model's
    assert r.tool_mask[0, : len(expected)].tolist() == expected
    assert r.sampling_logps[0, : len(expected)].tolist() == [LOGP if m else 0.0 for m in expected]
    assert not r.truncated[0]
    assert batch.rewards.total.tolist() == [1.0]  # the reward saw the message list
    loss_mask = TrainBatch.of(batch).loss_mask(False)
    assert loss_mask[0, : len(expected)].tolist() == expected  # the tool's tokens: no loss
    assert batch.metrics["agent/tool_calls"] == 1 and batch.metrics["tokens/tool"] == len(tool)
    assert batch.metrics["tokens/model"] == len(model) + 3


def test_faulty_tools_are_answered_or_masked_and_counted(tok):
    def slow(x: str) -> str:
        """Sleeps.

        Args:
            x: anything
        """
        time.sleep(3)
        return x

    prompts = {"a=": "[calc:1/0]", "b=": "[calc 12]", "c=": "[nope:1]", "d=": "[slow:1]",
               "e=": "[calc:2+2]"}

    def script(context):
        first = context.splitlines()[0]
        return prompts[first] if context.endswith("=") else "done<eos>"

    start = time.perf_counter()
    batch = collect(tok, collector(tok, script, tools=[calc, slow], tool_timeout=0.3),
                    list(prompts), ["x"] * 5, max_new_tokens=80)
    assert time.perf_counter() - start < 2.5  # the hung call did not hold the step
    texts = batch.texts
    assert "error: not arithmetic: '1/0'" in texts[0]  # raised: its message is the answer
    assert "error: malformed tool call" in texts[1]
    assert "error: unknown tool 'nope'" in texts[2]
    assert texts[4].startswith("[calc:2+2]4\n")
    total = batch.rewards.total
    assert math.isnan(total[3]) and not total[[0, 1, 2, 4]].isnan().any()  # hung: masked
    assert batch.metrics["agent/tool_errors"] == 4 and batch.metrics["agent/failed_episodes"] == 1
    assert batch.rewards.failed == 1


def test_turns_and_tokens_are_bounded(tok):
    def caller(context):  # calls forever
        return "[calc:1+1]"

    batch = collect(tok, collector(tok, caller, max_turns=2), ["1+1="], ["2"], 60)
    assert batch.metrics["agent/tool_calls"] == 2 and bool(batch.rollout.truncated[0])
    batch = collect(tok, collector(tok, caller), ["1+1="], ["2"], 20)
    assert int(batch.rollout.lengths[0]) <= 20 and bool(batch.rollout.truncated[0])


class Counter:
    """An environment in TRL's contract: reset(**row) gives an observation, its methods are
    tools, get_reward() the episode's reward."""

    def reset(self, prompt, answer, **_):
        self.answer, self.used = answer, 0
        return " (tool: add)"

    def add(self, pair: str) -> str:
        """Adds two numbers.

        Args:
            pair: like 3+4
        """
        self.used += 1
        a, b = pair.split("+")
        return str(int(a) + int(b))

    def get_reward(self) -> float:
        return float(self.used)

    def _private(self):
        return "not a tool"


def test_an_environment_per_episode_with_its_tools_and_reward(tok):
    def script(context):
        if context.endswith(")"):  # the prompt with the reset observation
            return "[add:3+4]"
        return "7<eos>"

    c = collector(tok, script, tools=[], environment_factory=Counter, environment_weight=0.5)
    batch = collect(tok, c, ["3+4=", "3+4="], ["7", "7"])
    assert batch.rollout.prompt(0) == tok("3+4= (tool: add)", add_special_tokens=False).input_ids
    assert batch.rewards.per_func["environment"].tolist() == [1.0, 1.0]
    assert batch.rewards.total.tolist() == [1.5, 1.5]  # 1 (answer) + 0.5 x 1 (environment)
    assert [n for n, _ in public_methods(Counter())] == ["add"]


def test_a_failing_environment_masks_its_episode(tok):
    class Broken(Counter):
        def reset(self, prompt, answer, **_):
            if prompt.startswith("2"):
                raise RuntimeError("down")
            return super().reset(prompt, answer)

    c = collector(tok, lambda ctx: "7<eos>", tools=[], environment_factory=Broken)
    batch = collect(tok, c, ["3+4=", "2+5="], ["7", "7"])
    assert not math.isnan(batch.rewards.total[0]) and math.isnan(batch.rewards.total[1])
    assert batch.metrics["agent/failed_episodes"] == 1


def test_a_class_without_the_contract_is_refused():
    class NoReset:
        def add(self, x: str) -> str:
            return x

    class NoTools:
        def reset(self, **row):
            return None

    with pytest.raises(UserError, match="^environment_factory: NoReset has no reset"):
        check_environment(NoReset)
    with pytest.raises(UserError, match="^environment_factory: NoTools has no public method"):
        check_environment(NoTools)


def test_runner_keeps_order_and_runs_calls_together():
    seen = []

    def wait(x: str) -> str:
        seen.append(threading.current_thread().name)
        time.sleep(0.2)
        return x

    start = time.perf_counter()
    out = ToolRunner(timeout=5).run([(wait, "wait", {"x": str(i)}) for i in range(4)])
    assert [r.text for r in out] == ["0", "1", "2", "3"]
    assert time.perf_counter() - start < 0.6 and len(set(seen)) == 4


def test_grpo_trains_on_episodes_without_the_tools_tokens(tmp_path, tok):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=4,
                      num_generations=2, eval_size=4, task_train_size=32, progress=False,
                      plots=False, save_every=0, eval_every=0, tools=[calc],
                      max_completion_length=24, reward_funcs=[answer_is_right],
                      vllm_importance_sampling_correction=False)
    trainer = Trainer(cfg, engine=lambda model, tokenizer: Scripted(tokenizer,
                                                                     calculator_script))
    trainer.train()
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["agent/calls_per_episode"] == 1.0 and rows[0]["agent/call_rate"] == 1.0
    assert rows[0]["reward/mean"] == 1.0  # calc is always right
    assert rows[0]["tokens/tool"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["after"]["accuracy"] == 1.0 and summary["after"]["call_rate"] == 1.0


def test_greedy_episodes_evaluate_accuracy_and_calls_by_level(tok):
    def script(context):  # calls the tool on products only
        if context.endswith("=") and "*" in context:
            return f"[calc:{context.rstrip('=')}]"
        if context.endswith("="):
            return "0<eos>"
        return context.rstrip("\n").split("]")[-1] + "<eos>"

    rows = [{"prompt": "12*7=", "answer": "84", "level": "L7"},
            {"prompt": "3+4=", "answer": "7", "level": "L0"},
            {"prompt": "0+0=", "answer": "0", "level": "L0"}]
    result = collector(tok, script).evaluate(rows, 24)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["call_rate"] == pytest.approx(1 / 3)
    assert result["by_level"] == {"L0": 0.5, "L7": 1.0}
    assert result["call_rate_by_level"] == {"L0": 0.0, "L7": 1.0}


def test_the_calculator_task_resumes_exactly(tmp_path):
    """The shipped tool-using model on the calculator task: 2 + 2 steps with a checkpoint in
    between are the 4 straight steps, metrics and weights."""

    def cfg(name, steps):
        return TrainConfig(model="tiny-tools", dataset="calculator", max_steps=steps,
                           output_dir=str(tmp_path / name), save_every=2, prompts_per_step=8,
                           num_generations=4, max_completion_length=32, eval_size=16,
                           task_train_size=64, progress=False, plots=False, learning_rate=1e-3)

    a, b, straight, resumed = straight_and_resumed(cfg, tmp_path)
    assert a == b
    assert sum(r["agent/tool_calls"] for r in a) > 0
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_e3_budgets_and_temperature_drive_the_episodes(tmp_path):
    import json

    from explorl.config import E3Config

    cfg = TrainConfig(model="tiny-tools", dataset="calculator", method="e3", max_steps=3,
                      output_dir=str(tmp_path / "run"), prompts_per_step=8, num_generations=4,
                      max_completion_length=32, eval_size=8, task_train_size=64, save_every=0,
                      eval_every=0, progress=False, plots=False,
                      e3=E3Config(budget_min=2, budget_max=6))
    Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counts = [c for r in rows[1:] for c in r["samples_per_prompt"]]
    assert min(counts) < max(counts) and sum(rows[-1]["samples_per_prompt"]) == 8 * 4
    assert rows[-1]["agent/episodes"] == 8 * 4

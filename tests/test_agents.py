"""Multi-turn rollouts: the episode's tokens as sampled and answered, the tools' tokens out of
the loss, rewards over message lists and from the environment, and every fault of a tool or an
environment masked and counted, never fatal. A scripted engine plays the model, so every token
is known."""

import json
import math
import threading
import time

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.agents.formats import HermesFormat, TaggedFormat
from explorl.agents.rollout import AgentCollector
from explorl.agents.tools import ToolRunner, check_environment, public_methods, schemas
from explorl.batch import Rollout, TrainBatch
from explorl.data.prompts import PromptCodec
from explorl.distributed import Parallel
from explorl.errors import UserError
from explorl.models.policy import load_tokenizer
from explorl.rewards.base import Scorer
from explorl.rollout.engine import completion_mask_from, cut_greedy, left_pad
from tests.helpers.hermes import NAMES_ONLY, bpe_tokenizer, with_template
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


def late(x: str) -> str:
    """Answers 7, two seconds late.

    Args:
        x: anything
    """
    time.sleep(2.0)
    return "7"


def turns_logged(c, tok) -> list:
    """Each engine call ``c`` makes from now on: its episodes (their prompts' first letters)
    and when it was made."""
    calls, generate = [], c.engine.generate

    def logged(prompts, *args, **kwargs):
        calls.append((sorted(tok.decode(p)[0] for p in prompts), time.monotonic()))
        return generate(prompts, *args, **kwargs)

    c.engine.generate = logged
    return calls


def test_a_slow_tool_holds_only_its_own_episode(tok):
    """Past ``straggler_wait``, episodes whose tools answered take their next turns without
    the one whose tool is slow; it rejoins when its tool answers (within its timeout)."""
    def script(context):
        if context.endswith("="):
            return "[late:1]" if context.startswith("a") else "[calc:2+2]"
        return context.rstrip("\n").split("]")[-1] + "<eos>"

    c = collector(tok, script, tools=[calc, late], tool_timeout=5.0, straggler_wait=0.5)
    calls = turns_logged(c, tok)
    batch = collect(tok, c, ["a=", "b=", "c="], ["7", "4", "4"])
    assert batch.rewards.total.tolist() == [1.0, 1.0, 1.0]  # the slow call did answer
    # b and c did not wait for a's tool
    assert [who for who, _ in calls] == [["a", "b", "c"], ["b", "c"], ["a"]]
    in_step = collector(tok, script, tools=[calc, late], tool_timeout=5.0, straggler_wait=5.0)
    calls = turns_logged(in_step, tok)
    collect(tok, in_step, ["a=", "b=", "c="], ["7", "4", "4"])
    # waiting longer than the tool: in step
    assert [who for who, _ in calls] == [["a", "b", "c"], ["a", "b", "c"]]


def test_a_straggler_holds_no_later_turn(tok):
    """While a's tool runs past the wait, b and c take two rounds of calls, each answered at
    once: none of their turns waits for a again."""
    def script(context):
        if context.endswith("="):
            return "[late:1]" if context.startswith("a") else "[calc:2+2]"
        if context.count("]") == 1 and not context.startswith("a"):
            return "[calc:1+3]"
        return context.rstrip("\n").split("]")[-1] + "<eos>"

    c = collector(tok, script, tools=[calc, late], tool_timeout=5.0, straggler_wait=0.5)
    calls = turns_logged(c, tok)
    batch = collect(tok, c, ["a=", "b=", "c="], ["7", "4", "4"], max_new_tokens=40)
    assert batch.rewards.total.tolist() == [1.0, 1.0, 1.0]
    assert [who for who, _ in calls] == [["a", "b", "c"], ["b", "c"], ["b", "c"], ["a"]]
    assert calls[2][1] - calls[1][1] < 0.4  # b and c's third turn did not wait for a


def test_waiting_for_all_calls_waits_for_the_last_ones_deadline():
    """Hung calls started 0.3 s apart, timeout 0.5: waiting for all returns at the later
    call's deadline, both timed out, not at the first's with the second still running."""
    def hang(x: str) -> str:
        time.sleep(3)
        return x

    runner = ToolRunner(timeout=0.5)
    first = runner.start(hang, "hang", {"x": "1"})
    time.sleep(0.3)
    second = runner.start(hang, "hang", {"x": "2"})
    runner.wait([first, second])
    assert time.monotonic() - first.started >= 0.8
    assert runner.outcome(first).fatal and runner.outcome(second).fatal


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


def test_reward_columns_join_when_an_environment_never_started(tok):
    """A round whose first environment failed still has the environment's column, and a part
    without it (an empty share, a round with no environment) joins as NaN."""
    from explorl.batch import Rewards

    class Broken(Counter):
        def reset(self, prompt, answer, **_):
            if prompt.startswith("2"):
                raise RuntimeError("down")
            return super().reset(prompt, answer)

    c = collector(tok, lambda ctx: "7<eos>", tools=[], environment_factory=Broken)
    batch = collect(tok, c, ["2+5=", "3+4="], ["7", "7"])
    assert "environment" in batch.rewards.per_func
    other = collect(tok, collector(tok, lambda ctx: "7<eos>"), ["3+4="], ["7"])
    joined = Rewards.concat([batch.rewards, other.rewards]).per_func["environment"]
    assert joined[1] == batch.rewards.per_func["environment"][1] and joined[2].isnan()


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


def test_sampled_episodes_are_written_with_their_messages_and_rewards(tmp_path):
    """``explorl sample`` on a multi-turn task writes one line per episode: its text is its
    messages joined, and its reward is the calculator's (1 if the last message is the answer)
    less 0.1 per tool answer."""

    from explorl.cli import main

    out = tmp_path / "episodes.jsonl"
    assert main(["sample", "tiny-tools", "--dataset", "calculator", "--out", str(out),
                 "--size", "8", "--n", "4", "--max-new-tokens", "32"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 8 * 4 and {x["level"] for x in lines} >= {"L0", "L7"}
    assert any(x["tool_calls"] for x in lines)
    for x in lines:
        messages = x["messages"]
        assert x["completion"] == "".join(m["content"] + "\n" * (m["role"] == "tool")
                                          for m in messages)
        answers = sum(m["role"] == "tool" for m in messages)
        # a call whose answer had no room left ends its episode, cut off
        assert x["tool_calls"] == answers or (x["tool_calls"] == answers + 1 and x["truncated"])
        right = messages[-1]["role"] == "assistant" and \
            messages[-1]["content"].strip() == x["answer"]
        assert x["reward"] == pytest.approx(float(right) - 0.1 * answers, abs=1e-6)


TOKENIZERS = {"char": lambda: with_template(load_tokenizer("tiny")), "bpe": bpe_tokenizer}


def hermes_script(context: str) -> str:
    """Calls calc in JSON with the user's expression, then says the tool's answer."""
    if context.endswith("</tool_response><eos>\n<|im_start|>assistant\n") or \
            context.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n"):
        return context.split("<tool_response>\n")[-1].split("\n")[0] + "<eos>"
    expression = context.split("user\n")[-1].split("=")[0]
    call = {"name": "calc", "arguments": {"expression": expression}}
    return f"<tool_call>{json.dumps(call)}</tool_call><eos>"


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_a_hermes_episode_is_what_the_chat_template_renders(kind):
    """Token in, token out with a chat model's format: prompt and episode decode to exactly
    the template's rendering of the conversation, tools listed; the template's tokens between
    the turns are the tool's, out of the loss."""
    tok = TOKENIZERS[kind]()
    codec = PromptCodec(tok, tools=schemas([calc]))
    c = collector(tok, hermes_script, fmt=HermesFormat(tok), codec=codec)
    rows = [{"prompt": "12*7=", "answer": "84"}]
    batch = c(rows, [codec.encode("12*7=")], [1], [1.0], 200)
    r = batch.rollout
    n = int(r.lengths[0])
    call = '<tool_call>{"name": "calc", "arguments": {"expression": "12*7"}}</tool_call>'
    conversation = [{"role": "user", "content": "12*7="},
                    {"role": "assistant", "content": call},
                    {"role": "tool", "name": "calc", "content": "84"},
                    {"role": "assistant", "content": "84"}]
    rendered = tok.apply_chat_template(conversation, tools=schemas([calc]), tokenize=False)
    prompt = r.prompt_ids[0][r.prompt_mask[0] == 1].tolist()
    assert tok.decode(prompt + r.completion_ids[0, :n].tolist()) == rendered.removesuffix("\n")
    assert '"name": "calc"' in tok.decode(prompt)  # the template showed the tool
    # the model wrote the call and its EOS, then the answer and its EOS; the rest is the tool's
    model_tokens = len(tok(call, add_special_tokens=False).input_ids) + 1
    by_model = r.tool_mask[0, :n].tolist()
    assert by_model[:model_tokens] == [1] * model_tokens
    assert r.completion_ids[0, model_tokens - 1] == tok.eos_token_id
    answer = tok("84", add_special_tokens=False).input_ids
    assert by_model[-len(answer) - 1:] == [1] * (len(answer) + 1)
    assert sum(by_model) == model_tokens + len(answer) + 1
    assert batch.rewards.total.tolist() == [1.0] and not r.truncated[0]
    assert batch.metrics["tokens/tool"] == n - sum(by_model)


def test_hermes_calls_of_one_turn_run_together_and_bad_ones_are_answered():
    """One turn, three blocks: a call (its arguments a JSON string, as some models write them),
    an unknown tool, broken JSON; all three answered in order, two counted as errors, the
    parsed calls kept in the assistant message as TRL's message lists hold them."""
    tok = with_template(load_tokenizer("tiny"))
    turn = ('<tool_call>{"name": "calc", "arguments": "{\\"expression\\": \\"2+3\\"}"}'
            '</tool_call><tool_call>{"name": "nope", "arguments": {}}</tool_call>'
            '<tool_call>{"name": calc}</tool_call><eos>')

    def script(context):
        return turn if context.endswith("=<eos>\n<|im_start|>assistant\n") else "5<eos>"

    codec = PromptCodec(tok, tools=schemas([calc]))
    c = collector(tok, script, fmt=HermesFormat(tok), codec=codec)
    episode, = c.play([{"prompt": "2+3=", "answer": "5"}], [codec.encode("2+3=")], [1], [1.0],
                      600)
    assert (episode.calls, episode.errors, episode.tool_turns) == (3, 2, 1)
    assert episode.messages[0]["tool_calls"] == [
        {"type": "function", "function": {"name": "calc", "arguments": {"expression": "2+3"}}},
        {"type": "function", "function": {"name": "nope", "arguments": {}}}]
    assert [m["content"] for m in episode.messages[1:]] == [
        "5", "error: unknown tool 'nope'", "error: malformed tool call", "5"]
    text = tok.decode(episode.ids)
    assert text.count("<tool_response>") == 3 and "<tool_response>\n5\n</tool_response>" in text
    assert c.rewards([episode]).total.tolist() == [1.0]


def test_hermes_greedy_episodes_keep_their_eos():
    """Greedy turns come without EOS; an episode puts it back, so the template's next turn
    follows it, as in sampled episodes."""
    tok = with_template(load_tokenizer("tiny"))
    codec = PromptCodec(tok, tools=schemas([calc]))
    c = collector(tok, hermes_script, fmt=HermesFormat(tok), codec=codec)
    episodes = c.play([{"prompt": "12*7=", "answer": "84"}], [codec.encode("12*7=")], [1],
                      [1.0], 200, greedy=True)
    e = episodes[0]
    written = [t for t, by_model in zip(e.ids, e.by_model) if by_model]
    assert written.count(tok.eos_token_id) == 2 and written[-1] == tok.eos_token_id and e.ended
    assert c.evaluate([{"prompt": "12*7=", "answer": "84"}], 200)["accuracy"] == 1.0


def test_hermes_needs_a_template_and_tools_with_schemas():
    with pytest.raises(UserError, match="tool_call_format: hermes .* has none"):
        HermesFormat(load_tokenizer("tiny"))

    def undocumented(x):
        return x

    with pytest.raises(UserError, match="tools: undocumented: no JSON schema"):
        schemas([undocumented])
    from explorl.agents import prompt_tools

    made_by_a_function = TrainConfig(environment_factory=lambda: Counter(),
                                     tool_call_format="hermes")
    with pytest.raises(UserError, match="environment_factory: tool_call_format=hermes lists"):
        prompt_tools(made_by_a_function)
    assert [t["function"]["name"] for t in prompt_tools(
        TrainConfig(environment_factory=Counter, tool_call_format="hermes"))] == ["add"]


def test_grpo_trains_on_hermes_episodes_with_the_tools_in_the_prompt(tmp_path, monkeypatch):
    """``tool_call_format=hermes`` through the trainer: the prompts list the tools, every
    episode calls, the tools' template tokens stay out of the loss, the step trains."""

    import explorl.trainer

    loaded = explorl.trainer.load_tokenizer
    monkeypatch.setattr(explorl.trainer, "load_tokenizer",
                        lambda name: with_template(loaded(name), NAMES_ONLY))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=4,
                      num_generations=2, eval_size=4, task_train_size=32, progress=False,
                      plots=False, save_every=0, eval_every=0, tools=[calc],
                      tool_call_format="hermes", max_completion_length=170,
                      reward_funcs=[answer_is_right],
                      vllm_importance_sampling_correction=False)
    trainer = Trainer(cfg, engine=lambda model, tokenizer: Scripted(tokenizer, hermes_script))
    assert all("system\ntools: calc<eos>" in trainer.tokenizer.decode(p)
               for p in trainer.prompt_ids)
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["agent/call_rate"] == 1.0 and rows[0]["reward/mean"] == 1.0
    assert rows[0]["tokens/tool"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # greedy episodes
    assert summary["after"]["accuracy"] == 1.0 and summary["after"]["call_rate"] == 1.0


@pytest.mark.parametrize("method", ["ppo", "dynamic_sampling", "herl"])
def test_ppo_dynamic_sampling_and_herl_train_on_episodes(tmp_path, method):
    """PPO's critic and GAE over episodes (the tools' tokens skipped, unit-tested in
    test_ppo.py), DAPO's refills of episodes, HeRL's self-distillation of failed episodes
    (the teacher shown the missed criterion): the steps train, and the episode counts cover
    every episode played (refills' dropped groups too)."""

    cfg = TrainConfig(model="tiny-tools", dataset="calculator", method=method, max_steps=3,
                      output_dir=str(tmp_path / "run"), prompts_per_step=8, num_generations=4,
                      max_completion_length=32, eval_size=8, task_train_size=64, save_every=0,
                      eval_every=0, progress=False, plots=False)
    Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["agent/tool_calls"] for r in rows) > 0
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    if method == "ppo":
        assert all(r["ppo/value_loss"] > 0 for r in rows)
    elif method == "herl":
        assert sum(r["herl/distilled"] for r in rows) > 0
    else:
        for r in rows:
            kept = round(r["dynamic_sampling/kept_groups"] * 8)
            assert r["agent/episodes"] == 4 * (kept + r["dynamic_sampling/dropped_groups"])


def reviser(context: str) -> str:
    """Answers 0 at once; shown its failure (the calculator's hindsight prompt), calls calc
    with the expression it was asked, then says the tool's answer."""
    if "\nfix:" not in context:
        return "0<eos>"
    if context.endswith("fix:"):
        return f"[calc:{context.split('revise ')[1].split('=')[0]}]"
    return context.rstrip("\n").split("]")[-1] + "<eos>"


def test_herl_revises_failed_episodes_with_tools_and_trains_them_under_the_prompt(tmp_path):
    """HeRL over episodes: a group that failed everywhere gets a revision episode under the
    hindsight prompt (the missed criterion named, the draft shown); the revision, tool call
    and all, overwrites a slot of its group under the original prompt, its tool's tokens kept
    out of the loss; the draft is paid its bonus."""
    from explorl.config import HeRLConfig

    cfg = TrainConfig(model="tiny-tools", dataset="calculator", method="herl", max_steps=1,
                      output_dir=str(tmp_path / "run"), prompts_per_step=2, num_generations=2,
                      max_completion_length=32, eval_size=4, task_train_size=16, save_every=0,
                      progress=False, plots=False, vllm_importance_sampling_correction=False,
                      herl=HeRLConfig(teach="revise", context="original", candidate_limit=1))
    t = Trainer(cfg, engine=lambda model, tokenizer: Scripted(tokenizer, reviser))
    rows = [r for r in t.train_rows if r["answer"] != "0"][:2]
    batch = t.collect(rows, [t.codec.encode(r["prompt"]) for r in rows], [2, 2], [1.0, 1.0], 32)
    assert batch.rewards.total.tolist() == [0.0] * 4 and batch.rewards.grades is not None
    plan = t.hindsight.plan(batch)
    assert plan.failed == [0, 1] and len(plan.drafts) == 2
    hindsight = t.tokenizer.decode(plan.request[1][0])
    expression = rows[0]["prompt"].rstrip("=")
    assert f"unmet: answers with the value of {expression}\ndraft: 0\nfix:" in hindsight
    revisions = t.collect(*plan.request)
    assert revisions.rewards.total.tolist() == pytest.approx([0.9, 0.9])  # right, one call
    train, metrics = t.hindsight.merge(batch, plan, revisions, t.logprobs.policy)
    assert metrics["herl/replaced"] == 2
    assert not all(train.rows["revision"][d] for d in plan.drafts)
    for d in plan.drafts:  # 0 + alpha (0.9 - 0), unless a revision took the draft's slot
        if not train.rows["revision"][d]:
            assert float(train.rewards[d]) == pytest.approx(t.cfg.herl.bonus_alpha * 0.9)
    r, loss_mask = train.rollout, train.loss_mask(False)
    for slot in torch.nonzero(train.rows["revision"]).flatten().tolist():
        group = int(r.group_ids[slot])
        assert r.prompt(slot) == t.codec.encode(rows[group]["prompt"])  # the original prompt
        text = t.tokenizer.decode(r.completion_ids[slot, : int(r.lengths[slot])])
        answer = rows[group]["answer"]
        assert text == f"[calc:{rows[group]['prompt'].rstrip('=')}]{answer}\n{answer}<eos>"
        call = len(rows[group]["prompt"]) - 1 + len("[calc:]")
        tool = len(answer) + 1
        assert loss_mask[slot, : int(r.lengths[slot])].tolist() == \
            [1] * call + [0] * tool + [1] * (len(answer) + 1)


def test_test_time_hindsight_improves_episodes():
    """``explorl improve`` on a multi-turn task: the first answers are episodes graded on the
    model's messages; a failed one is revised by a new episode under the hindsight prompt, tools
    and all, and the best answer is kept."""
    from explorl.exploration.hindsight import template_for
    from explorl.improve import improve

    t = Trainer(TrainConfig(model="tiny-tools", dataset="calculator", eval_size=8,
                            task_train_size=16, output_dir="unused", progress=False,
                            reward_funcs=["rubric"], max_completion_length=32),
                engine=lambda model, tokenizer: Scripted(tokenizer, reviser))
    rows = [r for r in t.eval_rows if r["answer"] != "0"]
    result = improve(t.engine, t.tokenizer, rows, template_for(None, "calculator"), 2, t.rubric,
                     32, 0.0, t.codec, episodes=t.collect)
    assert result["success_by_round"] == [0.0, 1.0, 1.0]
    assert result["answers"][0] == (f"[calc:{rows[0]['prompt'].rstrip('=')}]"
                                    f"{rows[0]['answer']}\n{rows[0]['answer']}")


def test_herl_judges_failure_on_the_rubric_not_on_the_tools_cost(tmp_path):
    """Right answers through the tool score 0.9 (1 less 0.1 for the call) but meet the whole
    rubric: no group failed, nothing is revised or distilled."""
    from explorl.exploration.distill import distillation_targets

    cfg = TrainConfig(model="tiny-tools", dataset="calculator", method="herl", max_steps=1,
                      output_dir=str(tmp_path / "run"), prompts_per_step=2, num_generations=2,
                      max_completion_length=32, eval_size=4, task_train_size=16,
                      progress=False, plots=False, vllm_importance_sampling_correction=False)
    t = Trainer(cfg, engine=lambda model, tokenizer: Scripted(tokenizer, calculator_script))
    rows = t.train_rows[:2]
    batch = t.collect(rows, [t.codec.encode(r["prompt"]) for r in rows], [2, 2], [1.0, 1.0], 32)
    assert batch.rewards.total.tolist() == pytest.approx([0.9] * 4)
    assert batch.rewards.met().tolist() == [1.0] * 4 and batch.rewards.graded_by == "rubric"
    assert t.hindsight.plan(batch).failed == []
    _, taught = distillation_targets(t.hindsight, batch, TrainBatch.of(batch), t.logprobs)
    assert taught["herl/distilled"] == 0

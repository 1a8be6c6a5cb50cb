"""Multi-turn rollouts: the model generates until it calls a tool or ends, the tool answers, and
the model goes on, up to ``max_turns`` turns with calls and ``max_new_tokens`` tokens in all.

Token in, token out: every episode is one growing list of token ids, the model's tokens kept as
sampled (with their sampling log-probs), the tools' answers appended as the call format renders
them; nothing is re-tokenised. The tools' tokens are marked in ``Rollout.tool_mask``, so the
loss never trains them, and counted apart. The episodes ready for a turn decode together, one
engine call per turn, and their tool calls run concurrently
(:class:`~explorl.agents.tools.ToolRunner`); an episode whose tool is slower than
``straggler_wait`` sits out the turns it misses.

Reward functions see each episode as a message list, as TRL passes multi-turn completions
(``assistant`` turns and ``tool`` answers), and ``environments=`` (one per sample); an
environment's ``get_reward()`` is one more reward function, ``environment``. An episode whose
tool hung, or whose environment failed (``reset``, ``get_reward``), gets no reward: masked and
counted.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass, field

import torch

from explorl.agents.formats import Call
from explorl.agents.tools import CallResult, ToolRunner, error_text, tools_of
from explorl.batch import Rewards, Rollout, ScoredBatch
from explorl.rewards.base import columns_of, compute_rewards
from explorl.rollout.collect import Collector
from explorl.rollout.engine import left_pad, right_pad

MALFORMED = CallResult(error_text("malformed tool call"), error=True)


@dataclass
class Episode:
    """One sample's conversation so far."""

    row: dict
    group: int
    temperature: float
    prompt: list[int]
    tools: dict
    environment: object | None = None
    ids: list[int] = field(default_factory=list)  # the completion: model and tool tokens
    by_model: list[int] = field(default_factory=list)  # 1 where the model wrote the token
    logps: list[float] = field(default_factory=list)  # the engine's (0 for tool tokens)
    messages: list[dict] = field(default_factory=list)
    calls: int = 0
    tool_turns: int = 0  # turns that called tools (a turn may make several calls)
    running: list = field(default_factory=list)  # this turn's (call, Running), until answered
    errors: int = 0
    done: bool = False
    ended: bool = False  # by EOS (else cut off: budget, turns)
    failed: bool = False  # a tool hung or the environment failed: no reward

    def add(self, ids: list[int], model: bool, logps: list[float] | None = None) -> None:
        self.ids += ids
        self.by_model += [int(model)] * len(ids)
        self.logps += logps if logps is not None else [0.0] * len(ids)


class AgentCollector(Collector):
    """:class:`~explorl.rollout.collect.Collector` for multi-turn episodes: ``tools`` (plain
    functions), ``environment_factory`` (TRL's contract, one instance per episode), ``fmt``
    the call format, ``codec`` to encode a prompt with its reset observation, at most
    ``max_turns`` turns with tool calls per episode (None: as many as the tokens allow), each
    call at most ``tool_timeout`` seconds, the others waiting at most ``straggler_wait`` for
    it; ``environment_weight`` weighs ``get_reward()``."""

    def __init__(self, engine, scorer, tokenizer, dist, device, *, fmt, codec, tools=(),
                 environment_factory=None, max_turns: int | None = None,
                 tool_timeout: float | None = 30.0, environment_weight: float = 1.0,
                 straggler_wait: float = 1.0):
        super().__init__(engine, scorer, tokenizer, dist, device)
        self.fmt, self.codec, self.tools = fmt, codec, list(tools)
        self.factory, self.max_turns = environment_factory, max_turns
        self.runner, self.straggler_wait = ToolRunner(tool_timeout), straggler_wait
        self.environment_weight = environment_weight
        self.eos_ids = {*getattr(engine, "eos_ids", ()), tokenizer.eos_token_id}

    def sample(self, rows, prompt_ids, counts, temperatures, max_new_tokens) -> ScoredBatch:
        t0 = time.perf_counter()
        episodes = self.play(rows, prompt_ids, counts, temperatures, max_new_tokens)
        if not episodes:  # this process's share of the request is empty
            return super().sample(rows, prompt_ids, counts, temperatures, max_new_tokens)
        rollout = self._rollout(episodes).to(self.device)
        t1 = time.perf_counter()
        rewards = self.rewards(episodes).to(self.device)
        closed(episodes)
        texts = [self.tokenizer.decode(e.ids, skip_special_tokens=True) for e in episodes]
        return ScoredBatch(rollout, rows, texts, rewards, self.scorer.passed(rewards),
                           {"generate": t1 - t0, "reward": time.perf_counter() - t1},
                           episode_counts(episodes))

    def play(self, rows, prompt_ids, counts, temperatures, max_new_tokens,
             greedy: bool = False) -> list[Episode]:
        """``counts[i]`` episodes of prompt ``i``, played to their end (greedily: every turn
        decoded greedily). Episodes whose tools have answered take their next turn together;
        one still waiting for a slow tool rejoins when it answers."""
        episodes = [self._start(rows[g], g, float(temperatures[g]), prompt_ids[g])
                    for g, n in enumerate(counts) for _ in range(n)]
        while any(not e.done for e in episodes):
            ready = [e for e in episodes if not e.done and not e.running]
            if ready:
                self._turn(ready, max_new_tokens, greedy)
            self._answer([e for e in episodes if e.running], max_new_tokens)
        return episodes

    def evaluate(self, rows: list[dict], max_new_tokens: int) -> dict:
        """Greedy episodes of ``rows``: accuracy (the first reward function at its threshold),
        the share of episodes that called a tool, both overall and by ``level``."""
        episodes = self.play(rows, [self.codec.encode(r["prompt"]) for r in rows],
                             [1] * len(rows), [1.0] * len(rows), max_new_tokens, greedy=True)
        passed = self.scorer.passed(self.rewards(episodes)).tolist()
        closed(episodes)
        called = [e.calls > 0 for e in episodes]
        out = {"accuracy": sum(passed) / len(rows), "n": len(rows),
               "call_rate": sum(called) / len(rows)}
        if "level" in rows[0]:
            levels = sorted({str(r["level"]) for r in rows})
            for key, values in (("by_level", passed), ("call_rate_by_level", called)):
                out[key] = {lv: _mean([v for r, v in zip(rows, values) if str(r["level"]) == lv])
                            for lv in levels}
        return out

    # --- an episode ----------------------------------------------------------------------------
    def _start(self, row: dict, group: int, temperature: float, prompt: list[int]) -> Episode:
        episode = Episode(row, group, temperature, prompt, tools_of(self.tools))
        if self.factory is None:
            return episode
        try:
            episode.environment = self.factory()
            observation = episode.environment.reset(**row)
            episode.tools = tools_of(self.tools, episode.environment)
        except Exception:  # noqa: BLE001 - a faulty environment must not kill the run
            episode.done = episode.failed = True
            return episode
        if isinstance(observation, str) and observation:
            own = self.codec.encode(row["prompt"])
            # a hindsight prompt (HeRL's revision) is not the row's: the observation follows it
            episode.prompt = self.codec.encode(with_observation(row["prompt"], observation)) \
                if prompt == own else prompt + self.tokenizer(
                    observation, add_special_tokens=False).input_ids
        return episode

    def _turn(self, live: list[Episode], max_new_tokens: int, greedy: bool = False) -> None:
        """One model turn of every ready episode; the tools its calls name start."""
        for e, turn, logps in zip(live, *self._generate(live, max_new_tokens, greedy)):
            room = max_new_tokens - len(e.ids)
            turn, logps = turn[:room], None if logps is None else logps[:room]
            e.add(turn, True, logps)
            # the turn ended itself (EOS or the format's stop), else the tokens ran out
            complete = bool(turn) and turn[-1] in self.eos_ids | set(self.fmt.stop_ids)
            calls = self.fmt.calls(turn, self.tokenizer.decode(turn), complete)
            e.messages.append(assistant_message(
                self.tokenizer.decode(turn, skip_special_tokens=True), calls))
            if calls is None:
                e.done, e.ended = True, complete
            elif len(e.ids) >= max_new_tokens or \
                    (self.max_turns is not None and e.tool_turns >= self.max_turns):
                e.done = True  # cut off: out of tokens, or of turns
            else:  # the calls start now; the malformed ones are answered at once
                e.running = [(c, None if c is None else self.runner.start(
                    e.tools.get(c.name), c.name, bound(e.tools.get(c.name), c.arguments)))
                    for c in calls]

    def _generate(self, live: list[Episode], max_new_tokens: int, greedy: bool):
        """Each live episode's next turn (token ids, and their sampling log-probs)."""
        budget = max(max_new_tokens - len(e.ids) for e in live)
        contexts = [e.prompt + e.ids for e in live]
        if greedy:  # its rows come without their EOS: put back, as sampling keeps it
            eos, stops = self.tokenizer.eos_token_id, self.fmt.stop_ids
            turns = [t if len(t) == budget or (t and t[-1] in stops) else t + [eos]
                     for t in self.engine.greedy(contexts, budget, stop_ids=stops)]
            return turns, [None] * len(live)
        out = self.engine.generate(contexts, [1] * len(live), [e.temperature for e in live],
                                   budget, stop_ids=self.fmt.stop_ids)
        lengths = out.lengths.tolist()
        turns = [row[:n] for row, n in zip(out.completion_ids.tolist(), lengths)]
        logps = [None] * len(live) if out.sampling_logps is None else \
            [row[:n] for row, n in zip(out.sampling_logps.tolist(), lengths)]
        return turns, logps

    def _answer(self, waiting: list[Episode], max_new_tokens: int) -> None:
        """The answers of waiting episodes, appended: of all of them when their calls end
        within ``straggler_wait`` seconds (then episodes go on in step, and a run is
        reproducible), else of those answered first, at least one, the rest waiting on."""
        calls = [r for e in waiting for _, r in e.running if r is not None]
        # this turn's calls get the wait; a straggler already past it holds nobody again
        fresh = [r for r in calls if time.monotonic() - r.started < self.straggler_wait]
        self.runner.wait(fresh, self.straggler_wait)
        while True:
            outcomes = [[MALFORMED if r is None else self.runner.outcome(r) for _, r in e.running]
                        for e in waiting]
            answered = [(e, o) for e, o in zip(waiting, outcomes) if None not in o]
            if answered or not waiting:
                break
            self.runner.wait(calls, first=True)
        for e, results in answered:
            self._answered(e, results, max_new_tokens)

    def _answered(self, e: Episode, results: list[CallResult], max_new_tokens: int) -> None:
        """An episode's calls are over: their answers appended, unless one ended it."""
        names = [c.name if c else "" for c, _ in e.running]
        e.running = []
        e.tool_turns += 1
        e.calls += len(results)
        e.errors += sum(r.error for r in results)
        if any(r.fatal for r in results):
            e.done = e.failed = True
            return
        tokens = self.fmt.answer([(name, r.text) for name, r in zip(names, results)])
        if len(e.ids) + len(tokens) >= max_new_tokens:
            e.done = True  # no room for the answers and a reply to them
            return
        e.add(tokens, False)
        e.messages += [{"role": "tool", "name": name, "content": r.text}
                       for name, r in zip(names, results)]

    # --- the batch -----------------------------------------------------------------------------
    def _rollout(self, episodes: list[Episode]) -> Rollout:
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad([e.prompt for e in episodes], pad)
        return Rollout(prompt_ids, prompt_mask, right_pad([e.ids for e in episodes], pad),
                       right_pad([[1] * len(e.ids) for e in episodes], 0),
                       torch.tensor([e.temperature for e in episodes]),
                       torch.tensor([e.group for e in episodes]),
                       torch.tensor([not e.ended for e in episodes]),
                       right_pad([e.logps for e in episodes], 0.0, torch.float32),
                       right_pad([e.by_model for e in episodes], 0))

    def rewards(self, episodes: list[Episode]) -> Rewards:
        """The episodes' rewards: the reward functions' over their message lists, and the
        environment's own; a failed episode's masked and counted."""
        funcs, weights = list(self.scorer.funcs), list(self.scorer.weights)
        if any(callable(getattr(e.environment, "get_reward", None)) for e in episodes):
            funcs.append(("environment", environment_reward))
            weights.append(self.environment_weight)
        rows = [e.row for e in episodes]
        columns = {**columns_of(rows), "environments": [e.environment for e in episodes]}
        # an episode that never started (its environment failed) still has a message list
        completions = [e.messages or [{"role": "assistant", "content": ""}] for e in episodes]
        rewards = compute_rewards(funcs, weights, [r["prompt"] for r in rows], completions,
                                  [e.ids for e in episodes], columns, self.scorer.timeout)
        failed = torch.tensor([e.failed for e in episodes])
        newly = failed & ~rewards.total.isnan()
        rewards.total[failed] = math.nan
        rewards.masked += int(newly.sum())
        rewards.failed += int(newly.sum())
        return rewards


def assistant_message(text: str, calls: list[Call | None] | None) -> dict:
    """A model turn as TRL's message lists hold it: its text, and the calls it made."""
    message = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [{"type": "function", "function": {
            "name": c.name, "arguments": c.arguments}} for c in calls if c is not None]
    return message


def closed(episodes: list[Episode]) -> None:
    """Each episode's environment closed, if it can be (a server session ends)."""
    for e in episodes:
        close = getattr(e.environment, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # the episode is over either way
                close()


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else math.nan


def environment_reward(prompts, completions, environments=None, **_) -> list:
    """Each episode's ``environment.get_reward()``: None where it has no environment, NaN
    (masked, counted) where the call fails, so one broken episode leaves the others' rewards."""
    out = []
    for env in environments:
        try:
            out.append(None if env is None else float(env.get_reward()))
        except Exception:  # noqa: BLE001 - a faulty environment must not kill the run
            out.append(math.nan)
    return out


def bound(fn, arguments: dict | str) -> dict:
    """A call's arguments as keywords: a bare string goes to the tool's first parameter."""
    if isinstance(arguments, dict) or fn is None:
        return arguments if isinstance(arguments, dict) else {}
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # not introspectable: the call itself will say what is wrong
        return {}
    return {params[0]: arguments} if params else {}


def with_observation(prompt, observation: str):
    """The prompt with a reset observation added: to its text, or to its last message."""
    if isinstance(prompt, str):
        return prompt + observation
    last = dict(prompt[-1])
    last["content"] = str(last.get("content", "")) + observation
    return [*prompt[:-1], last]


def episode_counts(episodes: list[Episode]) -> dict[str, float]:
    """Counts a step reports: episodes, tool calls and errors, failed episodes, tokens by
    role."""
    return {"agent/episodes": len(episodes),
            "agent/tool_calls": sum(e.calls for e in episodes),
            "agent/tool_errors": sum(e.errors for e in episodes),
            "agent/failed_episodes": sum(e.failed for e in episodes),
            "agent/episodes_with_calls": sum(e.calls > 0 for e in episodes),
            "tokens/model": sum(sum(e.by_model) for e in episodes),
            "tokens/tool": sum(len(e.ids) - sum(e.by_model) for e in episodes)}

"""Collect: generate completions for a request and score them, as one :class:`ScoredBatch`.

Under several processes each process generates and scores a contiguous share of the request's
prompts, and the scored shares are gathered once, so every process holds the whole batch in
the request's order: advantages, HeRL, controllers and metrics then run on the whole batch,
identically everywhere. In one process nothing is gathered.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch

from explorl.batch import Rewards, Rollout, ScoredBatch, added
from explorl.rewards.base import Scorer
from explorl.rollout.engine import RolloutEngine


class Collector:
    """``collect(rows, prompt_ids, counts, temperatures, max_new_tokens) -> ScoredBatch``:
    ``counts[i]`` samples of prompt ``i`` (``rows[i]`` its data row, ``prompt_ids[i]`` its
    tokens) at ``temperatures[i]``. The batch's tensors live on ``device`` (the model's)."""

    def __init__(self, engine: RolloutEngine, scorer: Scorer, tokenizer, dist,
                 device: torch.device | str = "cpu"):
        self.engine, self.scorer, self.tokenizer, self.dist = engine, scorer, tokenizer, dist
        self.device = torch.device(device)

    def __call__(self, rows: list[dict], prompt_ids: list[list[int]], counts: list[int],
                 temperatures: list[float], max_new_tokens: int) -> ScoredBatch:
        share = self.dist.share(len(rows))  # this process's prompts
        local = self.sample(rows[share], prompt_ids[share], counts[share], temperatures[share],
                            max_new_tokens)
        return self._gathered(replace(local, rows=rows), share.start)

    def with_engine(self, engine: RolloutEngine) -> Collector:
        """The same collector generating with ``engine`` (a guide's)."""
        out = copy.copy(self)
        out.engine = engine
        return out

    def sample(self, rows: list[dict], prompt_ids: list[list[int]], counts: list[int],
               temperatures: list[float], max_new_tokens: int) -> ScoredBatch:
        """This process's share of a request, generated and scored."""
        t0 = time.perf_counter()
        rollout = self.engine.generate(prompt_ids, counts, temperatures,
                                       max_new_tokens).to(self.device)
        t1 = time.perf_counter()
        ids = rollout.completions()
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        sample_rows = [rows[g] for g in rollout.group_ids.tolist()]
        rewards = (self.scorer(sample_rows, texts, ids) if ids else self._no_rewards()).to(
            self.device)  # reward functions see Python values; the step, tensors on the device
        t2 = time.perf_counter()
        return ScoredBatch(rollout, rows, texts, rewards, self.scorer.passed(rewards),
                           {"generate": t1 - t0, "reward": t2 - t1})

    def _no_rewards(self) -> Rewards:
        """What scoring no sample gives (a process whose share of a request is empty)."""
        empty = torch.zeros(0)
        return Rewards(empty, {name: empty for name, _ in self.scorer.funcs}, 0, [],
                       [] if self.scorer.graded else None)

    def _gathered(self, local: ScoredBatch, first_prompt: int) -> ScoredBatch:
        """Every process's share joined in rank order, group ids counted over the request."""
        if self.dist.world == 1:
            return local
        # Objects travel through the CPU: a pickled CUDA tensor names its sender's GPU.
        parts = self.dist.gather((local.rollout.to("cpu"), first_prompt, local.texts,
                                  local.rewards.to("cpu"), local.passed.cpu(), local.metrics))
        rollouts = []
        for rollout, first, *_ in parts:
            rollout.group_ids = rollout.group_ids + first
            rollouts.append(rollout)
        device = self.device
        return ScoredBatch(Rollout.concat(rollouts, self.tokenizer.pad_token_id).to(device),
                           local.rows, [t for p in parts for t in p[2]],
                           Rewards.concat([p[3] for p in parts]).to(device),
                           torch.cat([p[4] for p in parts]).to(device), local.seconds,
                           added([p[5] for p in parts]))

"""The GRPO training loop: one step reads top to bottom like the algorithm.

rollouts -> rewards -> advantages -> clipped policy update (+ KL, entropy) -> metrics/checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from explorl.algorithms.advantages import AdvantageInputs, compute_advantages
from explorl.algorithms.losses import (
    Normalizer,
    aggregate,
    clipped_surrogate,
    kl_estimate,
    shaped_surrogate,
)
from explorl.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from explorl.config import TrainConfig, save_config, validate
from explorl.data import arithmetic, champ, gym, rubric_task
from explorl.data.loaders import columns_of, load_rows
from explorl.data.prompts import PromptCodec
from explorl.distributed import Parallel
from explorl.errors import TrainingStopped, UserError
from explorl.evaluation import evaluate
from explorl.exploration import hindsight as herl
from explorl.exploration.budget import RolloutBudget
from explorl.exploration.temperature import EntropyKeeper
from explorl.improve import hindsight_prompt
from explorl.models import lora
from explorl.models.policy import (
    TokenStats,
    completion_logprobs,
    disable_dropout,
    load_model,
    load_tokenizer,
)
from explorl.rewards.base import Rewards, compute_rewards, resolve
from explorl.rewards.rubric import RubricReward, parse_rubric
from explorl.rollout.engine import HFEngine, Rollout
from explorl.tracking import (
    MetricsLog,
    Progress,
    Trackers,
    format_table,
    log_completions,
    plot_run,
    truncate_metrics,
)

BUILTIN_TASKS = {"arithmetic", *rubric_task.VARIANTS}
HERL_COUNTS = {"herl/drafts", "herl/revisions", "herl/replaced", "herl/tokens"}  # summed
log = logging.getLogger("explorl")


class PromptSampler:
    """Shuffled passes over the data set; its position is part of the checkpoint."""

    def __init__(self, size: int, batch: int, seed: int):
        self.size, self.batch, self.seed = size, batch, seed
        self.epoch, self.pos = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch:
            order = self._order()
            take = order[self.pos:self.pos + self.batch - len(out)].tolist()
            out += take
            self.pos += len(take)
            if self.pos >= self.size:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]


@dataclass
class Batch:
    """What the update needs, aligned row by row with the rollout."""

    rollout: Rollout
    advantages: torch.Tensor  # [N, L]
    loss_mask: torch.Tensor  # [N, L]
    old_logps: torch.Tensor | None  # [N, L], None when the ratio is exactly 1
    ref_logps: torch.Tensor | None  # [N, L], None when beta == 0
    revision: torch.Tensor | None = None  # [N] bool: HeRL revision rows (shaped, off-policy)
    revision_old_logps: torch.Tensor | None = None  # [N, L] behaviour log-probs of revisions


def unique_names(funcs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Two reward functions of the same name get ``name``, ``name_2``: metrics stay apart."""
    seen: dict[str, int] = {}
    out = []
    for name, fn in funcs:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", fn))
    return out


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device has one (CPU and CUDA do)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """GRPO (and its Dr.GRPO / DAPO / RLOO variants) for any Hugging Face causal LM.

    Everything that can fail on user input (config, data, reward functions, model) fails in the
    constructor, before anything is written.
    """

    def __init__(self, config: TrainConfig | None = None, **overrides):
        cfg = config or TrainConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        if cfg.dataset is None:
            cfg = replace(cfg, dataset="rubric" if cfg.method == "herl" else "arithmetic")
        validate(cfg)
        self.cfg = cfg
        set_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model)
        self.codec = PromptCodec(self.tokenizer, cfg.apply_chat_template, cfg.max_prompt_length)
        self.train_rows, self.eval_rows, default_reward = self._load_data()
        self.rubric = RubricReward(cfg.rubric_reward, self._judge())
        specs = cfg.reward_funcs or [default_reward]
        self.reward_funcs = unique_names(
            [("rubric", self.rubric) if s == "rubric" else resolve(s) for s in specs])
        if cfg.method == "herl" and not ("rubric" in self.train_rows[0] and any(
                isinstance(fn, RubricReward) for _, fn in self.reward_funcs)):
            raise UserError("method: herl needs the 'rubric' reward (reward_funcs: [rubric]) "
                            "and data with a 'rubric' column")
        self.revise_template = cfg.herl_revise_template or (
            rubric_task.REVISE_TEMPLATE if str(cfg.dataset) in rubric_task.VARIANTS
            else herl.DEFAULT_TEMPLATE)
        self.herl_rng = random.Random(cfg.seed)
        self.reward_weights = cfg.reward_weights or [1.0] * len(self.reward_funcs)
        self.prompt_ids = [self.codec.encode(r["prompt"]) for r in self.train_rows]
        self.model = load_model(cfg.model)
        self._check_lengths()
        if cfg.lora_r:
            targets = cfg.lora_target_modules  # PEFT wants its shorthand as a bare string
            self.model = lora.apply_lora(self.model, cfg.lora_r, cfg.lora_alpha, 0.0,
                                         "all-linear" if targets == ["all-linear"] else targets)
        if cfg.gradient_checkpointing:  # the newer name first (transformers 5.x)
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable({"use_reentrant": False})
        disable_dropout(self.model)
        self.model.train()
        self.ref_model = None
        if cfg.beta > 0 and not cfg.lora_r:  # the reference exists only when the KL term is on
            self.ref_model = load_model(cfg.model).eval().requires_grad_(False)
        self.engine = HFEngine(self.model, self.tokenizer, top_p=cfg.top_p)
        self.dist = Parallel()  # several processes only under accelerate launch or torchrun
        self.train_model, self.optimizer = self.dist.prepare(self.model, lambda model: adamw(
            lora.trainable_parameters(model) if cfg.lora_r else model.parameters(),
            lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
            betas=(cfg.adam_beta1, cfg.adam_beta2)), cfg.max_grad_norm)
        self.sampler = PromptSampler(len(self.train_rows), cfg.prompts_per_step, cfg.seed)
        self.budget = RolloutBudget(
            cfg.num_generations, cfg.budget_min, cfg.budget_max, cfg.budget_rule,
            cfg.budget_delta, cfg.budget_rerank, cfg.budget_prior_strength, cfg.seed,
        ) if cfg.budget == "e3" else None
        self.keeper = EntropyKeeper(
            cfg.temperature, self.model.config.vocab_size, cfg.max_steps, cfg.entropy_target,
            cfg.entropy_target_steps, cfg.entropy_ema, cfg.temperature_min,
            cfg.temperature_max, cfg.temperature_anneal_fraction, cfg.temperature_anneal_ratio,
        ) if cfg.temperature_control == "e3" else None
        self.out = Path(cfg.output_dir)
        self.step_done = 0
        self.nonfinite_streak = 0
        self.tokens_total = 0
        self.before: dict | None = None

    # --- set-up ------------------------------------------------------------------------------
    def _load_data(self):
        cfg = self.cfg
        gym_task = gym.parse_spec(cfg.dataset)
        if gym_task is not None:
            train, eval_rows = gym.gym_splits(gym_task, cfg.task_train_size, cfg.eval_size,
                                              cfg.seed, **cfg.task_kwargs)
            default = "explorl.data.gym:gym_reward"
        elif cfg.dataset in ("champ", "champ:hints"):
            train = eval_rows = champ.champ_rows(with_hints=cfg.dataset == "champ:hints")
            default = "explorl.data.champ:champ_reward"
        elif isinstance(cfg.dataset, str) and cfg.dataset in BUILTIN_TASKS:
            if cfg.dataset == "arithmetic":
                train, heldout = arithmetic.splits(cfg.task_train_size, cfg.eval_size)
            else:
                train, heldout = rubric_task.splits(cfg.task_train_size, cfg.eval_size,
                                                    rubric_task.VARIANTS[cfg.dataset])
            eval_rows = load_rows(cfg.eval_dataset, name="eval_dataset") \
                if cfg.eval_dataset is not None else heldout
            default = "arithmetic" if cfg.dataset == "arithmetic" else "rubric"
        else:
            train = load_rows(cfg.dataset, name="dataset")
            eval_rows = load_rows(cfg.eval_dataset, name="eval_dataset")[: cfg.eval_size] \
                if cfg.eval_dataset is not None else []
            default = "rubric" if "rubric" in train[0] else None
            if not cfg.reward_funcs and default is None:
                raise UserError("reward_funcs: a data set other than a built-in task needs at "
                                "least one reward function (or a 'rubric' column)")
        for name, rows in (("dataset", train), ("eval_dataset", eval_rows)):
            where = cfg.dataset if name == "dataset" else cfg.eval_dataset
            where = where if isinstance(where, str) else name
            for i, row in enumerate(rows):  # rubrics are checked once, here, with their row
                if "rubric" in row:
                    row["rubric"] = parse_rubric(row["rubric"], f"{where}: row {i + 1}: rubric")
        return train, eval_rows, default

    def _judge(self):
        """The LLM judge for criteria checked by ``judge``, if the data has any."""
        cfg = self.cfg
        judged = any(c.judged for r in self.train_rows + self.eval_rows
                     for c in r.get("rubric") or [])
        if not judged:
            return None
        from explorl.rewards import judge

        if cfg.judge_local_model:
            model = load_model(cfg.judge_local_model).eval()
            return judge.HFJudge(model, load_tokenizer(cfg.judge_local_model),
                                 on_failure=cfg.judge_on_failure)
        if not cfg.judge_url or not cfg.judge_model:
            raise UserError("judge_url: the rubric has criteria checked by 'judge'; set "
                            "judge_url and judge_model (or judge_local_model)")
        return judge.HTTPJudge(cfg.judge_url, cfg.judge_model, cfg.judge_api_key_env,
                               cfg.judge_timeout, cfg.judge_retries, cfg.judge_concurrency,
                               on_failure=cfg.judge_on_failure)

    def _check_lengths(self) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is None:
            return
        longest = max(len(p) for p in self.prompt_ids)
        if longest + self.cfg.max_completion_length > limit:
            raise UserError(
                f"max_prompt_length/max_completion_length: prompts of {longest} tokens plus "
                f"{self.cfg.max_completion_length} completion tokens exceed the model's "
                f"{limit} positions")

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, then constant."""
        warm = self.cfg.warmup_steps
        return self.cfg.learning_rate * (min(1.0, step / warm) if warm else 1.0)

    # --- one step ----------------------------------------------------------------------------
    def step(self, step: int) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.dist.seed_step(cfg.seed, step, self.herl_rng)

        # Under FSDP, sampling and the log-probs before the update use gathered weights.
        with self.dist.gathered(), self.precision():
            # 1. Rollouts: samples per prompt (E3 budget, else num_generations) at the current
            #    temperature (E3 entropy keeping, else the configured one).
            indices = self.sampler.next()
            rows = [self.train_rows[i] for i in indices]
            prompts = [self.prompt_ids[i] for i in indices]
            counts = self.sample_counts(rows, step)
            # This process's share of the prompts (all of them in a single process).
            rows, prompts, counts = map(self.dist.shard, (rows, prompts, counts))
            temperature = self.keeper.temperature if self.keeper else cfg.temperature
            rollout = self.engine.generate(prompts, counts, [temperature] * len(prompts),
                                           cfg.max_completion_length)
            t1 = time.perf_counter()

            # 2. Rewards, weighted over the reward functions; NaN marks an unknown reward.
            rewards = self.score(rows, rollout)
            for error in rewards.errors:
                log.warning("step %d: reward masked: %s", step, error)
            # every process stops together
            failed, sampled = self.dist.sum(rewards.failed, len(rollout))
            if failed > cfg.reward_failure_limit * sampled:
                raise TrainingStopped(
                    f"step {step}: rewards failed on {int(failed)} of {int(sampled)} samples "
                    f"(over reward_failure_limit={cfg.reward_failure_limit}); first error: "
                    f"{(rewards.errors or ['?'])[0]}")
            t2 = time.perf_counter()

            # 3. HeRL: failed groups -> hindsight prompts -> revisions -> draft bonus,
            #    replacement.
            trained, total, revision, revision_old = rollout, rewards.total, None, None
            herl_metrics = {}
            if cfg.method == "herl":
                trained, total, revision, revision_old, herl_metrics = self.hindsight(
                    rows, prompts, rollout, rewards)
            t_herl = time.perf_counter()

            # 4. Group-relative advantages over each prompt's samples (groups of any size).
            loss_mask = trained.completion_mask.clone()
            loss_mask[total.isnan()] = 0
            if cfg.mask_truncated_completions:
                loss_mask[trained.truncated] = 0
            # The batch std spans every process's rewards (dr_grpo never scales).
            shared_std = cfg.scale_rewards == "batch" and self.dist.world > 1 \
                and cfg.advantage_estimator != "dr_grpo"
            advantages = compute_advantages(
                cfg.advantage_estimator, AdvantageInputs(total, trained.group_ids, loss_mask),
                "none" if shared_std else cfg.scale_rewards)
            if shared_std:  # as group_relative's batch scaling, eps included
                advantages = torch.nan_to_num(advantages / (self.dist.std(total) + 1e-4))

            batch = Batch(trained, advantages, loss_mask, self.old_logps(trained),
                          self.ref_logps(trained), revision, revision_old)

        # 5. Policy update: clipped surrogate on samples, shaped surrogate on revisions, KL to
        #    the reference, entropy bonus.
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        update = {}
        for _ in range(cfg.num_iterations):
            update = self.update(batch)
        self.nonfinite_streak = self.nonfinite_streak + 1 if update["update_skipped"] else 0
        if self.nonfinite_streak >= cfg.nonfinite_limit:
            raise TrainingStopped(f"step {step}: the loss or gradient was not finite in "
                                  f"{self.nonfinite_streak} steps in a row (nonfinite_limit)")
        t3 = time.perf_counter()

        # 6. Controllers observe: pass rates -> difficulty, entropy -> next temperature.
        passed = self.passed(rewards)
        if self.budget:
            self.budget.stats.update(*self.dist.concat(  # every process's observations
                [str(r["prompt_id"]) for r in rows],
                [passed[(rollout.group_ids == g) & ~rewards.total.isnan()].tolist()
                 for g in range(len(rows))]))
        metrics = self.step_metrics(*self.dist.whole_batch(rollout, rewards, passed), update,
                                    (t1 - t0, t2 - t1, t_herl - t2, t3 - t_herl), step)
        herl_metrics = self.dist.reduce(herl_metrics, HERL_COUNTS)
        metrics.update(herl_metrics)
        every = cfg.log_completions_every
        if every and step % every == 0:
            samples = self.dist.concat([rows[g]["prompt"] for g in trained.group_ids.tolist()],
                                       self.decode(trained), total.tolist(),
                                       advantages[:, 0].tolist(), self.revisions(trained, revision))
            if self.dist.is_main:
                log_completions(self.out / "completions.jsonl", step, *samples[:4],
                                revisions=samples[4] if revision is not None else None)
        self.tokens_total += herl_metrics.get("herl/tokens", 0)
        metrics["tokens/total"] = self.tokens_total
        if self.keeper:
            metrics["entropy_target"] = self.keeper.current_target(step)
            self.keeper.observe(step, update["entropy"])
        return metrics

    def sample_counts(self, rows: list[dict], step: int) -> list[int]:
        if self.budget is None:
            return [self.cfg.num_generations] * len(rows)
        self.budget.new_epoch(self.sampler.epoch)
        return self.budget.allocate([str(r["prompt_id"]) for r in rows], step)

    def passed(self, rewards: Rewards) -> torch.Tensor:
        """Correct samples: the first reward function at or above ``success_threshold``."""
        first = next(iter(rewards.per_func.values()))
        return (first >= self.cfg.success_threshold) & ~first.isnan()

    def score(self, rows: list[dict], rollout: Rollout) -> Rewards:
        per_sample = [rows[g] for g in rollout.group_ids.tolist()]
        ids = [row[: int(n)] for row, n in zip(rollout.completion_ids.tolist(),
                                               rollout.lengths.tolist())]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        prompts = [r["prompt"] for r in per_sample]
        completions = [self.codec.completion(p, t) for p, t in zip(prompts, texts)]
        return compute_rewards(self.reward_funcs, self.reward_weights, prompts, completions,
                               ids, columns_of(per_sample))

    def decode(self, rollout: Rollout) -> list[str]:
        ids = [row[: int(n)] for row, n in zip(rollout.completion_ids.tolist(),
                                               rollout.lengths.tolist())]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def revisions(self, trained: Rollout, revision: torch.Tensor | None) -> list:
        """Per sample: False, or for a revision the prompt it is trained under (the hindsight
        prompt in the default context; True in the original context)."""
        if revision is None:
            return [False] * len(trained)
        flags = revision.tolist()
        if self.cfg.herl_context != "hindsight":
            return flags
        return [self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) if flag
                else False for ids, mask, flag in zip(trained.prompt_ids, trained.prompt_mask,
                                                      flags)]

    def hindsight(self, rows: list[dict], prompts: list[list[int]], rollout: Rollout,
                  rewards: Rewards):
        """HeRL steps 2-8 (:func:`explorl.exploration.hindsight.augment`). Returns the rollout to
        train on, its rewards, the revision rows, the revisions' behaviour log-probs (needed
        when the ratio is not exactly 1) and metrics."""
        lists = "blank" if self.cfg.herl_blank_hindsight else "shown"
        out = herl.augment(
            self.cfg, rows, prompts, rollout, rewards, self.engine, self.score,
            lambda row, draft, verdicts: hindsight_prompt(
                self.codec, self.revise_template, row, draft, verdicts, lists),
            self.decode, self.passed, self.herl_rng, self.tokenizer.pad_token_id)
        return (out.rollout, out.rewards, out.revision,
                self.behaviour_logps(out.rollout, out.sampled, out.picks), out.metrics)

    @torch.no_grad()
    def behaviour_logps(self, trained: Rollout, out: Rollout,
                        picks: list[tuple[int, int]]) -> torch.Tensor | None:
        """Log-probs of revisions trained under the original prompt, under the hindsight prompt
        they were sampled from: the denominator of a true importance ratio."""
        if not picks or self.cfg.herl_context == "hindsight":
            return None  # the policy's own log-probs under that prompt (``old_logps``)
        logps = self._logps(self.model, out, [k for _, k in picks], with_entropy=False).logps
        full = torch.zeros(trained.completion_ids.shape, dtype=logps.dtype)
        for i, (slot, k) in enumerate(picks):
            n = int(out.lengths[k])
            full[slot, :n] = logps[i, :n]
        return full

    @torch.no_grad()
    def old_logps(self, rollout: Rollout) -> torch.Tensor | None:
        """Log-probs of the policy that sampled; needed only when it will change in between
        (several iterations). With one update per batch the ratio is exactly 1."""
        if self.cfg.num_iterations == 1:
            return None
        return self._logps(self.model, rollout, with_entropy=False).logps

    @torch.no_grad()
    def ref_logps(self, rollout: Rollout) -> torch.Tensor | None:
        if self.cfg.beta > 0 and self.cfg.lora_r:  # the reference is the base, adapters off
            with lora.adapters_disabled(self.model):
                return self._logps(self.model, rollout, with_entropy=False).logps
        if self.ref_model is None:
            return None
        return self._logps(self.ref_model, rollout, with_entropy=False).logps

    def _logps(self, model, rollout: Rollout, rows=slice(None), with_entropy: bool | str = True,
               entropy_at_one: bool = False) -> TokenStats:
        with self.precision():
            return completion_logprobs(
                model, rollout.prompt_ids[rows], rollout.prompt_mask[rows],
                rollout.completion_ids[rows], rollout.completion_mask[rows],
                rollout.temperatures[rows], with_entropy=with_entropy,
                entropy_at_one=entropy_at_one)

    def precision(self):
        """bf16 autocast for forward passes when ``bf16`` is on; float32 otherwise."""
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def update(self, batch: Batch) -> dict:
        """One optimizer step over the batch (in micro-batches if asked), loss = the whole
        batch's loss exactly, whatever the micro-batch size."""
        cfg = self.cfg
        n = len(batch.rollout)
        # Counts over every process's rows: each process's loss is its share of the batch's.
        sequences, tokens = self.dist.sum(int((batch.loss_mask.sum(-1) > 0).sum()),
                                          int(batch.loss_mask.sum()))
        norm = Normalizer(int(sequences), int(tokens), cfg.max_completion_length)
        eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        size = cfg.micro_batch_size or n
        chunks = [slice(s, s + size) for s in range(0, n, size)]
        # Forward and backward passes are collective under DDP/FSDP: a process with fewer rows
        # (E3 budgets) makes up the difference with zero-weight passes over its first row.
        filler = self.dist.max(len(chunks)) - len(chunks)
        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "entropy_t1": 0.0, "clip_fraction": 0.0,
                "loss/on_policy": 0.0, "loss/off_policy": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        for i, rows in enumerate(chunks + [slice(0, 1)] * filler):
            mask = batch.loss_mask[rows]
            full = batch.rollout.completion_mask[rows]
            if i >= len(chunks):
                mask, full = torch.zeros_like(mask), torch.zeros_like(full)
            logps, entropy, entropy_t1 = self._logps(
                self.train_model, batch.rollout, rows,
                with_entropy="grad" if cfg.entropy_coef else True,
                entropy_at_one=self.keeper is not None)
            old = logps.detach() if batch.old_logps is None else batch.old_logps[rows]
            per_token, bound = clipped_surrogate(logps, old, batch.advantages[rows],
                                                 cfg.epsilon, eps_high, cfg.dual_clip)
            off = None
            if batch.revision is not None and batch.revision[rows].any():
                off = batch.revision[rows].unsqueeze(-1)
                if batch.revision_old_logps is not None:
                    old = torch.where(off, batch.revision_old_logps[rows], old)
                shaped = shaped_surrogate(logps, old, batch.advantages[rows], cfg.herl_gamma)
                per_token = torch.where(off, shaped, per_token)
                bound = bound & ~off
            if batch.ref_logps is not None:
                kl = kl_estimate(logps, batch.ref_logps[rows], cfg.kl_estimator)
                per_token = per_token + cfg.beta * kl
                sums["kl"] += float((kl.detach() * mask).sum())
            if cfg.entropy_coef:
                per_token = per_token - cfg.entropy_coef * entropy
            loss = aggregate(per_token, mask, cfg.loss_type, norm)
            self.dist.backward(loss, last=i == len(chunks) + filler - 1)
            sums["loss"] += float(loss.detach())
            if batch.revision is not None:
                off_mask = mask * off.long() if off is not None else torch.zeros_like(mask)
                sums["loss/off_policy"] += float(aggregate(per_token.detach(), off_mask,
                                                           cfg.loss_type, norm))
                sums["loss/on_policy"] += float(aggregate(per_token.detach(), mask - off_mask,
                                                          cfg.loss_type, norm))
            sums["entropy"] += float((entropy.detach() * full).sum())
            if entropy_t1 is not None:
                sums["entropy_t1"] += float((entropy_t1 * full).sum())
            sums["clip_fraction"] += float((bound.float() * mask).sum())
        sums = dict(zip(sums, self.dist.sum(*sums.values())))  # the whole batch's
        # One bad batch must not poison the weights or Adam's moments: a step whose loss or
        # gradient is not finite is skipped.
        grad_norm, skipped = self.dist.step(self.optimizer, cfg.max_grad_norm,
                                            math.isfinite(sums["loss"]))
        if skipped:
            log.warning("non-finite loss or gradient: update skipped")
        tokens = max(norm.num_tokens, 1)
        generated = max(int(self.dist.sum(int(batch.rollout.completion_mask.sum()))[0]), 1)
        out = {"loss": sums["loss"], "kl": sums["kl"] / tokens,
               "entropy": sums["entropy"] / generated,
               "clip_fraction": sums["clip_fraction"] / tokens, "grad_norm": float(grad_norm),
               "update_skipped": int(skipped)}
        if self.keeper is not None:
            out["entropy_t1"] = sums["entropy_t1"] / generated
        if batch.revision is not None:
            out["loss/on_policy"] = sums["loss/on_policy"]
            out["loss/off_policy"] = sums["loss/off_policy"]
        return out

    def step_metrics(self, rollout: Rollout, rewards: Rewards, correct: torch.Tensor,
                     update: dict, times: tuple[float, ...], step: int) -> dict:
        r = rewards.total
        known = r[~r.isnan()]
        groups = rollout.group_ids
        n_groups = int(groups.max()) + 1
        zero_std = all_wrong = all_right = 0  # groups; and rollouts in all-wrong/right groups
        for g in range(n_groups):
            member = (groups == g) & ~r.isnan()
            vals = r[member]
            zero_std += int(vals.numel() > 0 and bool((vals == vals[0]).all()))
            ok = correct[member]
            all_wrong += int(ok.numel()) if ok.numel() and not bool(ok.any()) else 0
            all_right += int(ok.numel()) if ok.numel() and bool(ok.all()) else 0
        tokens = int(rollout.completion_mask.sum())
        self.tokens_total += tokens
        m = {
            "step": step,
            "reward/mean": float(known.mean()) if known.numel() else math.nan,
            "reward/std": float(known.std()) if known.numel() > 1 else 0.0,
            "accuracy": float(correct.float().mean()),
            "frac_zero_std_groups": zero_std / n_groups,
            "frac_rollouts_all_wrong": all_wrong / len(rollout),
            "frac_rollouts_all_right": all_right / len(rollout),
            **update,
            "completion_length/mean": float(rollout.lengths.float().mean()),
            "truncated_fraction": float(rollout.truncated.float().mean()),
            "rewards/masked": rewards.masked,
            "rewards/failed": rewards.failed,
            "tokens/generated": tokens,
            "tokens/total": self.tokens_total,
            "temperature": float(rollout.temperatures.mean()),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time/generate": times[0],
            "time/reward": times[1],
            "time/herl": times[2],  # revisions (0 for GRPO)
            "time/update": times[3],
            "time/step": sum(times),
        }
        if self.budget:
            m["samples_per_prompt"] = torch.bincount(groups, minlength=n_groups).tolist()
        for name, v in rewards.per_func.items():
            k = v[~v.isnan()]
            m[f"reward/{name}/mean"] = float(k.mean()) if k.numel() else math.nan
            m[f"reward/{name}/std"] = float(k.std()) if k.numel() > 1 else 0.0
        return m

    # --- the run -----------------------------------------------------------------------------
    def evaluate(self, pass_k: list[int] | tuple = ()) -> dict | None:
        if not self.eval_rows:
            return None
        return evaluate(self.model, self.tokenizer, self.eval_rows, self.reward_funcs[0],
                        self.cfg.max_completion_length, pass_k=tuple(pass_k),
                        temperature=self.cfg.eval_temperature,
                        threshold=self.cfg.success_threshold, codec=self.codec)

    def evaluate_on_main(self, pass_k: list[int] | tuple = ()) -> dict | None:
        """Evaluation by the first process (None elsewhere); every process takes part in
        gathering the weights under FSDP."""
        with self.dist.gathered(), self.precision():
            return self.evaluate(pass_k) if self.dist.is_main else None

    def _prepare_output(self) -> MetricsLog | None:
        """Resume (every process); the files and the metrics log belong to the first."""
        cfg, out, main = self.cfg, self.out, self.dist.is_main
        out.mkdir(parents=True, exist_ok=True)
        checkpoints = list_checkpoints(out)
        if cfg.resume == "never":
            for p in checkpoints if main else []:
                shutil.rmtree(p)
            checkpoints = []
        if checkpoints:
            state = load_checkpoint(checkpoints[-1], self.model, self.optimizer, self.dist)
            self.step_done = state["step"]
            self.tokens_total = state["tokens_total"]
            self.before = state["before"]
            self.sampler.load(state["sampler"])
            if self.budget:
                self.budget.load(state["budget"])
            if self.keeper:
                self.keeper.load(state["keeper"])
            if state.get("herl_rng"):
                version, internal, gauss = state["herl_rng"]
                self.herl_rng.setstate((version, tuple(internal), gauss))
            if main:
                truncate_metrics(out / "metrics.jsonl", self.step_done)
                truncate_metrics(out / "completions.jsonl", self.step_done)
        if not main:
            return None
        save_config(cfg, out / "config.yaml")
        return MetricsLog(out / "metrics.jsonl", append=bool(checkpoints))

    def _checkpoint(self, step: int) -> None:
        state = {"tokens_total": self.tokens_total, "before": self.before,
                 "sampler": self.sampler.state(),
                 "budget": self.budget.state() if self.budget else None,
                 "keeper": self.keeper.state() if self.keeper else None,
                 "herl_rng": self.herl_rng.getstate()}
        weights = self.dist.model_state()  # gathered from every process under FSDP
        optimizer_sd = self.dist.optimizer_state(self.optimizer)
        if self.dist.is_main:
            save_checkpoint(self.out, step, self.model, self.tokenizer, optimizer_sd, state,
                            self.cfg.save_total_limit, model_state=weights)
        self.dist.barrier()  # nobody runs ahead of a checkpoint being written

    def train(self) -> dict:
        """Run to ``max_steps`` (resuming if a checkpoint exists); return the summary."""
        cfg = self.cfg
        log = self._prepare_output()  # None on all but the first process
        main = self.dist.is_main  # evaluates and writes; the others wait at the next collective
        trackers = Trackers(cfg.report_to if main else [], self.out, config=asdict(cfg) if
                            isinstance(cfg.dataset, str) else None, resume=self.step_done > 0)
        if self.before is None:
            self.before = self.evaluate_on_main(cfg.eval_pass_k)
        progress = Progress(cfg.max_steps, initial=self.step_done,
                            enabled=cfg.progress and main)
        start = time.perf_counter()
        after, evaluated_last = None, False
        try:
            for step in range(self.step_done + 1, cfg.max_steps + 1):
                if self.budget_spent():
                    break
                try:
                    metrics = self.step(step)
                except TrainingStopped:
                    self._checkpoint(self.step_done)  # the last completed step, to resume from
                    raise
                last = step == cfg.max_steps or self.budget_spent()
                if last or cfg.eval_every and step % cfg.eval_every == 0:
                    result = self.evaluate_on_main(cfg.eval_pass_k if last else ())
                    after, evaluated_last = (result if last else None), last
                    metrics["eval/accuracy"] = (result or {}).get("accuracy")
                    if result and "dense" in result:
                        metrics["eval/dense"] = result["dense"]
                if main:
                    log.write(metrics)
                    trackers.log(metrics, step)
                progress.update(metrics)
                self.step_done = step
                if cfg.save_every and step % cfg.save_every == 0 or last:
                    self._checkpoint(step)
        finally:
            progress.close()
            if log:
                log.close()
            trackers.close()
        if not evaluated_last:  # resumed at max_steps: the final evaluation was not logged
            after = self.evaluate_on_main(cfg.eval_pass_k)
        return self._finish(after, time.perf_counter() - start)

    def budget_spent(self) -> bool:
        limit = self.cfg.max_generated_tokens
        return limit is not None and self.tokens_total >= limit

    def _finish(self, after: dict | None, seconds: float) -> dict:
        weights = self.dist.model_state()  # gathered from every process under FSDP
        if not self.dist.is_main:
            return self.dist.broadcast(None)  # the first process's summary, once it is written
        final, tmp = self.out / "final", self.out / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        if lora.is_lora(self.model):  # adapters alone, then the merged model in final/
            lora.save_adapter(self.model, self.out / "adapter")
            self.model = lora.merge_lora(self.model)
        self.model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        summary = {"before": self.before, "after": after, "steps": self.step_done,
                   "tokens_generated": self.tokens_total, "train_seconds": round(seconds, 1),
                   "model": str(self.cfg.model), "method": self.cfg.method}
        tmp_summary = self.out / ".summary.json.tmp"
        tmp_summary.write_text(json.dumps(summary, indent=2))
        os.replace(tmp_summary, self.out / "summary.json")
        if self.cfg.plots:
            plot_run(self.out)
        return self.dist.broadcast(summary)


def before_after_table(summary: dict) -> str:
    before, after = summary.get("before") or {}, summary.get("after") or {}
    rows = [["accuracy", f"{100 * before.get('accuracy', math.nan):.1f}",
             f"{100 * after.get('accuracy', math.nan):.1f}"]]
    for level in sorted(after.get("by_level") or {}):
        rows.append([f"  {level}", f"{100 * before['by_level'][level]:.1f}",
                     f"{100 * after['by_level'][level]:.1f}"])
    return format_table(rows, ["held-out (greedy, %)", "before", "after"])


__all__ = ["Trainer", "before_after_table"]

"""The training loop: one step reads top to bottom like the algorithm.

prompts -> samples per prompt and temperature (E3) -> collect: generate and score, the whole
batch on every process (dynamic sampling refills all-equal groups) -> HeRL revises failed
groups -> advantages -> update over this process's rows -> controllers observe -> metrics. The
trainer builds the parts and calls them in that order; the math lives in them.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from explorl.algorithms import build_algorithm
from explorl.algorithms.update import PolicyUpdate
from explorl.batch import ScoredBatch, TrainBatch
from explorl.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_final
from explorl.config import TrainConfig, save_config, validate
from explorl.data.prompts import PromptCodec
from explorl.data.tasks import PromptSampler, load_task
from explorl.devices import resolve_device
from explorl.distributed import Parallel, world_size
from explorl.errors import Interrupted, TrainingStopped, UserError
from explorl.evaluation import evaluate
from explorl.exploration.budget import RolloutBudget
from explorl.exploration.dynamic_sampling import DynamicSampling
from explorl.exploration.entropy_bonus import AdaptiveEntropyBonus
from explorl.exploration.hindsight import Hindsight, template_for
from explorl.exploration.temperature import EntropyKeeper
from explorl.failures import FailurePolicy
from explorl.interrupts import Interrupts, StepAbandoned
from explorl.metrics import step_metrics
from explorl.models import lora
from explorl.models.master_weights import MasterWeights
from explorl.models.policy import build_policy, load_tokenizer, precision
from explorl.output_lock import OutputLock
from explorl.rewards.base import Scorer, resolve
from explorl.rewards.judge import build_judge
from explorl.rewards.rubric import RubricReward
from explorl.rollout.collect import Collector
from explorl.rollout.engine import RolloutEngine, build_engine
from explorl.tracking import (
    MetricsLog,
    Progress,
    Trackers,
    format_table,
    log_completions,
    plot_run,
    truncate_metrics,
)

EngineFactory = Callable[..., RolloutEngine]  # (model, tokenizer) -> engine


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
    """GRPO and its variants, HeRL and E3, for any Hugging Face causal LM.

    ``engine``: builds the rollout engine from ``(model, tokenizer)`` (default: the one
    ``cfg.engine`` names, :class:`explorl.rollout.fast.FastEngine` or
    :class:`explorl.rollout.engine.HFEngine`). Everything that can fail on user
    input (config, data, reward functions, model) fails in the constructor, before anything is
    written.
    """

    def __init__(self, config: TrainConfig | None = None, engine: EngineFactory | None = None,
                 **overrides):
        cfg = replace(config or TrainConfig(), **overrides)
        if cfg.dataset is None:
            cfg = replace(cfg, dataset="rubric" if cfg.uses("herl") else "arithmetic")
        validate(cfg)
        if cfg.offline:
            raise UserError(f"method={cfg.method} learns offline: use explorl.OfflineTrainer "
                            "(explorl train picks it)")
        self.cfg = cfg
        set_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model)
        self.codec = PromptCodec(self.tokenizer, cfg.apply_chat_template, cfg.max_prompt_length)
        task = load_task(cfg)
        self.train_rows, self.eval_rows = task.train, task.eval
        self.prompt_ids = [self.codec.encode(r["prompt"]) for r in self.train_rows]
        self.device = resolve_device(cfg.device, cfg.bf16 or cfg.bf16_weights,
                                     distributed=world_size() > 1)
        self.model, ref_model = build_policy(cfg, self.device)
        self.scorer = self._scorer(task.default_reward)  # a reward model on the policy's device
        self._check_lengths()
        self.dist = Parallel(self.device)  # several processes only under a launcher
        self.dist.refuse_unsupported(cfg)
        self.train_model, self.optimizer = self.dist.prepare(
            self.model, self._optimizer, cfg.max_grad_norm)
        self.engine = (engine or partial(build_engine, cfg))(self.model, self.tokenizer)
        self.collect = Collector(self.engine, self.scorer, self.tokenizer, self.dist,
                                 self.device)
        self.algorithm = build_algorithm(cfg)
        self.hindsight = self._hindsight() if cfg.uses("herl") else None
        e3 = cfg.uses("e3")
        self.budget = RolloutBudget.from_config(cfg) if e3 and cfg.e3.budget else None
        self.adaptive_temperature = EntropyKeeper.from_config(cfg, self.model.config.vocab_size) \
            if e3 and cfg.e3.adaptive_temperature else None
        self.dynamic_sampling = DynamicSampling(cfg.prompts_per_step,
                                                cfg.dynamic_sampling_max_rounds,
                                                self.tokenizer.pad_token_id) \
            if cfg.dynamic_sampling else None
        self.entropy_bonus = AdaptiveEntropyBonus.from_config(cfg) \
            if cfg.use_adaptive_entropy else None
        self.update = PolicyUpdate(
            cfg, self.model, self.train_model, ref_model, self.optimizer, self.dist,
            self.algorithm, self.hindsight.revision_loss if self.hindsight else None,
            entropy_at_one=self.adaptive_temperature is not None)
        self.algorithm.bind(self.update)
        self.prompts = PromptSampler(len(self.train_rows), cfg.prompts_per_step, cfg.seed)
        self.failures = FailurePolicy(cfg.reward_failure_limit, cfg.nonfinite_limit)
        self.interrupts = Interrupts()
        self.update.before_apply = self.interrupts.close  # weights change: no abandoning now
        self.out = Path(cfg.output_dir)
        self.step_done, self.tokens_total, self.saved_step = 0, 0, None
        self.before: dict | None = None

    # --- set-up ------------------------------------------------------------------------------
    def _scorer(self, default_reward: str | None) -> Scorer:
        cfg = self.cfg
        self.rubric = RubricReward(cfg.rubric_reward,
                                   build_judge(cfg.judge, self.train_rows + self.eval_rows))
        funcs = unique_names([("rubric", self.rubric) if s == "rubric"
                              else resolve(s, self.model.device)
                              for s in cfg.reward_funcs or [default_reward]])
        scorer = Scorer(funcs, cfg.reward_weights or [1.0] * len(funcs), self.codec,
                        cfg.success_threshold, cfg.reward_timeout)
        if cfg.uses("herl") and not (scorer.graded and "rubric" in self.train_rows[0]):
            raise UserError("method: herl needs the 'rubric' reward (reward_funcs: [rubric]) or "
                            "another graded reward, and data with a 'rubric' column")
        return scorer

    def _optimizer(self, model):
        """AdamW over the trained weights; over float32 masters of them with bf16_weights."""
        cfg = self.cfg
        params = lora.trainable_parameters(model) if cfg.lora_r else model.parameters()

        def make(params):
            return adamw(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                         betas=(cfg.adam_beta1, cfg.adam_beta2))

        return MasterWeights(params, make) if cfg.bf16_weights else make(params)

    def _hindsight(self) -> Hindsight:
        cfg = self.cfg
        return Hindsight(cfg.herl, self.codec, template_for(cfg.herl.revise_template,
                                                            cfg.dataset),
                         cfg.max_completion_length, cfg.seed)

    def _check_lengths(self) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(p) for p in self.prompt_ids)
        if limit is not None and longest + self.cfg.max_completion_length > limit:
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
        """One training step; returns its metrics."""
        cfg = self.cfg
        self.dist.seed_step(cfg.seed, step, self.hindsight.rng if self.hindsight else None)
        with self.dist.gathered(), precision(self.model, cfg.bf16):  # FSDP: gathered weights
            # 1. Prompts, samples per prompt (E3 budget) and the temperature (E3 keeps entropy).
            indices, epoch = self.prompts.next()
            rows = [self.train_rows[i] for i in indices]
            counts = self.budget.allocate(self._ids(rows), step, epoch) if self.budget \
                else [cfg.num_generations] * len(rows)
            temperature = self.adaptive_temperature.temperature \
                if self.adaptive_temperature else cfg.temperature
            # 2. Collect: generate and score; every process holds the whole batch.
            batch = self.collect(rows, [self.prompt_ids[i] for i in indices], counts,
                                 [temperature] * len(rows), cfg.max_completion_length)
            self.failures.check_rewards(step, batch)
            dropped_tokens, sampling_metrics = 0, {}
            if self.dynamic_sampling:  # DAPO: groups of equal rewards out, new prompts' in
                batch, dropped_tokens, sampling_metrics = self.dynamic_sampling.fill(
                    batch, partial(self._fresh_groups, step, temperature))
            # 3. HeRL: failed groups -> hindsight prompts -> revisions -> bonus, replacement.
            start = time.perf_counter()
            train_batch, herl_metrics = (TrainBatch.of(batch), {}) if not self.hindsight \
                else self.hindsight.augment(batch, self.collect, self.update.logprobs)
            seconds = {**batch.seconds, "herl": time.perf_counter() - start}
            # 4. Advantages of the whole batch; this process's rows of it for the update.
            start = time.perf_counter()
            loss_mask = train_batch.loss_mask(cfg.mask_truncated_completions)
            advantages = self.algorithm.advantages(train_batch, loss_mask) if not \
                self.hindsight else self.hindsight.advantages(train_batch, loss_mask,
                                                              self.algorithm.advantages)
            shard = self.update.prepare(train_batch, advantages, loss_mask)
        # 5. Policy update (and the stop after too many non-finite ones).
        update = self.update.step(shard, self.lr_at(step), step)
        self.failures.check_update(step, update["update_skipped"])
        seconds["update"] = time.perf_counter() - start
        # 6. Controllers observe: pass rates -> difficulty, entropy -> next temperature.
        if self.budget:
            self.budget.observe(self._ids(rows), batch.passes_by_prompt())
        if self.entropy_bonus:
            self.update.entropy_coef = self.entropy_bonus.observe(update["entropy"])
        # 7. Metrics and the completions table.
        self.tokens_total += batch.generated_tokens + herl_metrics.get("herl/tokens", 0) + \
            dropped_tokens
        metrics = step_metrics(step, batch, update, seconds, self.tokens_total,
                               self.lr_at(step), samples_per_prompt=self.budget is not None)
        metrics.update(herl_metrics)
        metrics.update(sampling_metrics)
        if self.adaptive_temperature:
            metrics["entropy_target"] = self.adaptive_temperature.current_target(step)
            self.adaptive_temperature.observe(step, update["entropy"])
        self._log_completions(step, batch, train_batch, advantages)
        return metrics

    def _fresh_groups(self, step: int, temperature: float, count: int) -> ScoredBatch:
        """``count`` new prompts' groups, generated and scored (dynamic sampling's refill)."""
        indices, _ = self.prompts.next(count)
        batch = self.collect([self.train_rows[i] for i in indices],
                             [self.prompt_ids[i] for i in indices],
                             [self.cfg.num_generations] * count, [temperature] * count,
                             self.cfg.max_completion_length)
        self.failures.check_rewards(step, batch)
        return batch

    @staticmethod
    def _ids(rows: list[dict]) -> list[str]:
        return [str(r["prompt_id"]) for r in rows]

    def _log_completions(self, step: int, batch: ScoredBatch, train_batch: TrainBatch,
                         advantages: torch.Tensor) -> None:
        every = self.cfg.log_completions_every
        if not (every and step % every == 0 and self.dist.is_main):
            return
        prompts = [batch.rows[g]["prompt"] for g in train_batch.rollout.group_ids.tolist()]
        log_completions(self.out / "completions.jsonl", step, prompts, train_batch.texts,
                        train_batch.rewards.tolist(), advantages[:, 0].tolist(),
                        revisions=train_batch.trained_under)

    # --- the run -----------------------------------------------------------------------------
    def evaluate(self, pass_k: list[int] | tuple = ()) -> dict | None:
        if not self.eval_rows:
            return None
        return evaluate(self.engine, self.tokenizer, self.eval_rows, self.scorer.funcs[0],
                        self.cfg.max_completion_length, pass_k=tuple(pass_k),
                        temperature=self.cfg.eval_temperature,
                        threshold=self.cfg.success_threshold, codec=self.codec,
                        reward_timeout=self.cfg.reward_timeout)

    def evaluate_on_main(self, pass_k: list[int] | tuple = ()) -> dict | None:
        """Evaluation by the first process (None elsewhere); every process takes part in
        gathering the weights under FSDP."""
        with self.dist.gathered(), precision(self.model, self.cfg.bf16):
            return self.evaluate(pass_k) if self.dist.is_main else None

    def _resumable(self) -> dict:
        """What a checkpoint holds besides weights, optimizer and RNG states."""
        parts = {"sampler": self.prompts, "budget": self.budget,
                 "temperature": self.adaptive_temperature, "hindsight": self.hindsight,
                 "entropy_bonus": self.entropy_bonus}
        return {name: part for name, part in parts.items() if part is not None}

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
            self.step_done, self.tokens_total = state["step"], state["tokens_total"]
            self.before = state["before"]
            for name, part in self._resumable().items():
                part.load(state[name])
            if self.entropy_bonus:
                self.update.entropy_coef = self.entropy_bonus.coef
            self.algorithm.load(state.get("algorithm", {}), state["tensors"])
            if main:
                truncate_metrics(out / "metrics.jsonl", self.step_done)
                truncate_metrics(out / "completions.jsonl", self.step_done)
        if not main:
            return None
        save_config(cfg, out / "config.yaml")
        return MetricsLog(out / "metrics.jsonl", append=bool(checkpoints))

    def _checkpoint(self, step: int) -> None:
        self.saved_step = step
        state = {"tokens_total": self.tokens_total, "before": self.before,
                 "algorithm": self.algorithm.state(),
                 **{name: part.state() for name, part in self._resumable().items()}}
        weights = self.dist.model_state()  # gathered from every process under FSDP
        optimizer_sd = self.dist.optimizer_state(self.optimizer)
        error = None
        if self.dist.is_main:
            try:
                save_checkpoint(self.out, step, self.model, self.tokenizer, optimizer_sd, state,
                                self.cfg.save_total_limit, model_state=weights,
                                extra_tensors=self.algorithm.tensors())
            except OSError as e:  # a full disk, a failing write: the last checkpoint stays
                error = self._write_failed(f"checkpoint-{step}", e)
        error = self.dist.broadcast(error)  # nobody runs ahead of a checkpoint being written
        if error:
            raise TrainingStopped(error)

    def _write_failed(self, what: str, error: OSError) -> str:
        checkpoints = list_checkpoints(self.out)
        kept = f"{checkpoints[-1]} is intact" if checkpoints else "no checkpoint was written"
        return (f"could not write {self.out / what} ({error.strerror or error}); {kept}; free "
                "space (or fix the folder) and run the same command to resume")

    def train(self) -> dict:
        """Run to ``max_steps`` (resuming if a checkpoint exists); return the summary. One run
        per ``output_dir`` (:mod:`explorl.output_lock`); SIGTERM and SIGINT stop it with a
        checkpoint (:mod:`explorl.interrupts`)."""
        lock = OutputLock(self.out)
        error = None
        if self.dist.is_main:  # the first process writes, so it holds the lock
            try:
                lock.acquire()
            except UserError as e:
                error = str(e)
        error = self.dist.broadcast(error)
        if error:
            raise UserError(error)
        try:
            with self.interrupts.installed(can_abandon=self.dist.world == 1):
                return self._run()
        finally:
            lock.release()

    def _run(self) -> dict:
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
                self._stop_if_interrupted()
                metrics = self._guarded_step(step)
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
            self._stop_if_interrupted()
        finally:
            progress.close()
            if log:
                log.close()
            trackers.close()
        if not evaluated_last:  # resumed at max_steps: the final evaluation was not logged
            after = self.evaluate_on_main(cfg.eval_pass_k)
        return self._finish(after, time.perf_counter() - start)

    def _guarded_step(self, step: int) -> dict:
        """:meth:`step`, abandoned (and put back) if a signal comes before its update changes
        the weights; a run that must stop saves the last completed step first."""
        boundary = self._boundary()
        try:
            with self.interrupts.abandonable():
                return self.step(step)
        except StepAbandoned as e:
            self._restore(boundary)
            self._interrupted(e.args[0])
        except TrainingStopped:
            self._checkpoint(self.step_done)  # the last completed step, to resume from
            raise

    def _boundary(self) -> dict:
        """What a step changes before its update: the random generators, the data position,
        HeRL's slot generator and the budget's pass."""
        return {"rng": (random.getstate(), np.random.get_state(), torch.get_rng_state()),
                "sampler": self.prompts.state(),
                "hindsight": self.hindsight.state() if self.hindsight else None,
                "budget": (self.budget.epoch, self.budget.frozen) if self.budget else None}

    def _restore(self, boundary: dict) -> None:
        python, numpy, torch_state = boundary["rng"]
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(torch_state)
        self.prompts.load(boundary["sampler"])
        if self.hindsight:
            self.hindsight.load(boundary["hindsight"])
        if self.budget:
            self.budget.epoch, self.budget.frozen = boundary["budget"]

    def _stop_if_interrupted(self) -> None:
        """Between steps: stop if a signal came (under several processes, to any of them)."""
        signum = self.interrupts.received or 0
        if self.dist.world > 1:
            signum = self.dist.max(signum)
        if signum:
            self._interrupted(signum)

    def _interrupted(self, signum: int) -> NoReturn:
        if self.saved_step != self.step_done:
            self._checkpoint(self.step_done)
        path = self.out / f"checkpoint-{self.step_done}"
        raise Interrupted(signum, f"{Interrupts.name(signum)}: saved step {self.step_done} in "
                                  f"{path}; run the same command to resume",
                          quiet=not self.dist.is_main)

    def budget_spent(self) -> bool:
        limit = self.cfg.max_generated_tokens
        return limit is not None and self.tokens_total >= limit

    def _finish(self, after: dict | None, seconds: float) -> dict:
        weights = self.dist.model_state()  # gathered from every process under FSDP
        if not self.dist.is_main:
            return self.dist.broadcast(None)  # the first process's summary, once it is written
        summary = {"before": self.before, "after": after, "steps": self.step_done,
                   "tokens_generated": self.tokens_total, "train_seconds": round(seconds, 1),
                   "model": str(self.cfg.model), "method": self.cfg.method}
        try:
            self._write_final(weights, summary)
        except OSError as e:
            summary = {"error": self._write_failed("final", e)}
        summary = self.dist.broadcast(summary)
        if "error" in summary:
            raise TrainingStopped(summary["error"])
        return summary

    def _write_final(self, weights: dict | None, summary: dict) -> None:
        """``final/`` (the model, merged if LoRA; ``adapter/``), ``summary.json``, plots."""
        if lora.is_lora(self.model):  # adapters alone, then the merged model in final/
            lora.save_adapter(self.model, self.out / "adapter")
            self.model = lora.merge_lora(self.model)
        save_final(self.out, self.model, self.tokenizer, summary, model_state=weights)
        if self.cfg.plots:
            plot_run(self.out)


def before_after_table(summary: dict) -> str:
    before, after = summary.get("before") or {}, summary.get("after") or {}
    if not before and not after:
        return ("held-out: none evaluated (no held-out set was given; eval_dataset=FILE "
                "evaluates one before and after training)")
    rows = [["accuracy", f"{100 * before.get('accuracy', float('nan')):.1f}",
             f"{100 * after.get('accuracy', float('nan')):.1f}"]]
    for level in sorted(after.get("by_level") or {}):
        rows.append([f"  {level}", f"{100 * before['by_level'][level]:.1f}",
                     f"{100 * after['by_level'][level]:.1f}"])
    return format_table(rows, ["held-out (greedy, %)", "before", "after"])


__all__ = ["Trainer", "before_after_table"]

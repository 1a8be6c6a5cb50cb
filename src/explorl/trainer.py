"""The training step, top to bottom like the algorithm.

prompts -> samples per prompt and temperature (E3) -> collect: generate and score, the whole
batch on every process (dynamic sampling refills all-equal groups) -> HeRL plans revisions of
failed groups, they are collected and merged -> advantages -> the update over this process's
rows, a sum of named loss terms -> controllers observe -> metrics. The trainer builds the parts
and calls them in that order; the math lives in them, the run around the steps in
:mod:`explorl.run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch

from explorl.agents import AgentCollector, build_collector, prompt_tools
from explorl.algorithms import build_algorithm
from explorl.algorithms.terms import (
    EntropyBonus,
    KLPenalty,
    MismatchCorrection,
    PolicyGradient,
)
from explorl.algorithms.update import PolicyUpdate
from explorl.batch import Advantages, ScoredBatch, TrainBatch
from explorl.config import TrainConfig, save_config, validate
from explorl.data.prompts import PromptCodec
from explorl.data.tasks import PromptSampler, load_task
from explorl.devices import resolve_device
from explorl.distributed import Parallel, world_size
from explorl.errors import UserError
from explorl.evaluation import evaluate
from explorl.exploration.budget import RolloutBudget
from explorl.exploration.distill import distillation_targets
from explorl.exploration.dynamic_sampling import Selection
from explorl.exploration.entropy_bonus import AdaptiveEntropyBonus
from explorl.exploration.guide import Guide
from explorl.exploration.hindsight import Hindsight, template_for
from explorl.exploration.temperature import EntropyKeeper
from explorl.failures import FailurePolicy
from explorl.interrupts import Interrupts
from explorl.metrics import step_metrics
from explorl.models import lora
from explorl.models.logprobs import LogProbs
from explorl.models.master_weights import MasterWeights
from explorl.models.policy import build_policy, load_tokenizer, precision
from explorl.optim import adamw, set_seed
from explorl.rewards.base import Scorer, resolve
from explorl.rewards.judge import build_judge
from explorl.rewards.rubric import RubricReward
from explorl.rollout import RolloutEngine, build_engine, check_sampling_logps
from explorl.run import RunLoop, RunSettings, linear_warmup
from explorl.tracking import format_table, log_completions

EngineFactory = Callable[..., RolloutEngine]  # (model, tokenizer) -> engine


def unique_names(funcs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Two reward functions of the same name get ``name``, ``name_2``: metrics stay apart."""
    seen: dict[str, int] = {}
    out = []
    for name, fn in funcs:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", fn))
    return out


def as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def build_scorer(cfg: TrainConfig, rubric: RubricReward, default_reward: str | None, codec,
                 device, first_row: dict) -> Scorer:
    """The run's weighted reward functions (``rubric`` is the run's rubric reward)."""
    funcs = unique_names([("rubric", rubric) if s == "rubric" else resolve(s, device)
                          for s in cfg.reward_funcs or as_list(default_reward)])
    scorer = Scorer(funcs, cfg.reward_weights or [1.0] * len(funcs), codec,
                    cfg.success_threshold, cfg.reward_timeout)
    if cfg.uses("herl") and not (scorer.graded and "rubric" in first_row):
        raise UserError("method: herl needs the 'rubric' reward (reward_funcs: [rubric]) or "
                        "another graded reward, and data with a 'rubric' column")
    return scorer


def make_optimizer(cfg: TrainConfig, model):
    """AdamW over the trained weights; over float32 masters of them with bf16_weights."""
    params = lora.trainable_parameters(model) if cfg.lora_r else model.parameters()

    def make(params):
        return adamw(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                     betas=(cfg.adam_beta1, cfg.adam_beta2))

    return MasterWeights(params, make) if cfg.bf16_weights else make(params)


def check_lengths(model, prompt_ids: list[list[int]], max_completion_length: int) -> None:
    """The longest prompt and a whole completion must fit the model's positions."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) for p in prompt_ids)
    if limit is not None and longest + max_completion_length > limit:
        raise UserError(
            f"max_prompt_length/max_completion_length: prompts of {longest} tokens plus "
            f"{max_completion_length} completion tokens exceed the model's {limit} positions")


class Trainer(RunLoop):
    """GRPO and its variants, PPO, HeRL and E3, for any Hugging Face causal LM.

    ``engine``: builds the rollout engine from ``(model, tokenizer)`` (default: the one
    ``cfg.engine`` names, :class:`explorl.rollout.fast.FastEngine` or
    :class:`explorl.rollout.engine.HFEngine`). Everything that can fail on user
    input (config, data, reward functions, model) fails in the constructor, before anything is
    written.
    """

    logs = ("completions.jsonl",)
    can_abandon = True

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
        task = load_task(cfg)
        self.codec = PromptCodec(self.tokenizer, cfg.apply_chat_template, cfg.max_prompt_length,
                                 prompt_tools(cfg, task.tools))
        self.train_rows, self.eval_rows = task.train, task.eval
        self.prompt_ids = [self.codec.encode(r["prompt"]) for r in self.train_rows]
        self.device = resolve_device(cfg.device, cfg.bf16 or cfg.bf16_weights,
                                     distributed=world_size() > 1)
        self.model, ref_model = build_policy(cfg, self.device)
        # a reward model runs on the policy's device
        self.rubric = RubricReward(cfg.rubric_reward,
                                   build_judge(cfg.judge, self.train_rows + self.eval_rows))
        self.scorer = build_scorer(cfg, self.rubric, task.default_reward, self.codec,
                                   self.model.device, self.train_rows[0])
        check_lengths(self.model, self.prompt_ids, cfg.max_completion_length)
        self.dist = Parallel(self.device)  # several processes only under a launcher
        self.dist.refuse_unsupported(cfg)
        self.train_model, self.optimizer = self.dist.prepare(
            self.model, partial(make_optimizer, cfg), cfg.max_grad_norm)
        self.engine = (engine or partial(build_engine, cfg))(self.model, self.tokenizer)
        check_sampling_logps(cfg, self.engine)
        self.collect = build_collector(cfg, self.engine, self.scorer, self.tokenizer,
                                       self.dist, self.device, self.codec, task.tools)
        self.algorithm = build_algorithm(cfg, self.device)
        self.logprobs = LogProbs.from_config(cfg, self.model, ref_model)
        self._build_exploration()
        self.interrupts = Interrupts()
        self.update = PolicyUpdate(cfg, self.train_model, self.optimizer, self.dist,
                                   self.algorithm, self._terms(), self.logprobs,
                                   before_apply=self.interrupts.close)  # no abandoning then
        self.prompts = PromptSampler(len(self.train_rows), cfg.prompts_per_step, cfg.seed)
        self.failures = FailurePolicy(cfg.reward_failure_limit, cfg.nonfinite_limit)
        self.settings = RunSettings(cfg.output_dir, cfg.max_steps, cfg.eval_every,
                                    cfg.save_every, cfg.save_total_limit, cfg.resume,
                                    cfg.progress, cfg.plots, tuple(cfg.report_to))
        self.out = Path(cfg.output_dir)
        self.tokens_total = 0

    # --- set-up ------------------------------------------------------------------------------
    def _build_exploration(self) -> None:
        """HeRL and its guide, E3's budget and temperature, the adaptive entropy bonus: those
        ``cfg`` asks."""
        cfg = self.cfg
        self.hindsight = Hindsight(cfg.herl, self.codec, template_for(
            cfg.herl.revise_template, cfg.dataset), cfg.max_completion_length, cfg.seed) \
            if cfg.uses("herl") else None
        self.guide = Guide(cfg.herl.guide_kind, self.model, cfg.herl.guide_ema) \
            if self.hindsight else None
        if self.guide and not self.guide.is_policy:  # revisions and teacher passes of its own
            self.guide_collect = self.collect.with_engine(
                build_engine(cfg, self.guide.model, self.tokenizer))
            self.guide_logprobs = LogProbs.from_config(cfg, self.guide.model)
        else:
            self.guide_collect, self.guide_logprobs = self.collect, self.logprobs
        e3 = cfg.uses("e3")
        self.budget = RolloutBudget.from_config(cfg) if e3 and cfg.e3.budget else None
        self.adaptive_temperature = EntropyKeeper.from_config(cfg, self.model.config.vocab_size) \
            if e3 and cfg.e3.adaptive_temperature else None
        self.entropy_bonus = AdaptiveEntropyBonus.from_config(cfg) \
            if cfg.entropy.adaptive else None

    def _terms(self) -> list:
        """The loss: the algorithm's policy gradient, HeRL's revision term, KL, entropy."""
        cfg = self.cfg
        correction = MismatchCorrection(cfg.vllm_importance_sampling_mode,
                                        cfg.vllm_importance_sampling_cap) \
            if cfg.vllm_importance_sampling_correction else None
        terms = [PolicyGradient(self.algorithm.policy_loss, correction)]
        terms += self.hindsight.terms() if self.hindsight else []
        terms += [KLPenalty(cfg.beta, cfg.kl_estimator)] if cfg.beta > 0 else []
        terms += [EntropyBonus(cfg.entropy.coef)] if cfg.entropy.coef or self.entropy_bonus \
            else []
        return terms

    def lr_at(self, step: int) -> float:
        return linear_warmup(self.cfg.learning_rate, self.cfg.warmup_steps, step)

    # --- one step ----------------------------------------------------------------------------
    def step(self, step: int) -> dict:
        """One training step; returns its metrics."""
        cfg = self.cfg
        self.dist.seed_step(cfg.seed, step, self.hindsight.rng if self.hindsight else None)
        with self.dist.gathered(), precision(self.model, cfg.bf16):  # FSDP: gathered weights
            # 1. Prompts, samples per prompt (E3 budget) and the temperature (E3 keeps entropy).
            indices, epoch = self.prompts.next()
            rows = [self.train_rows[i] for i in indices]
            temperature = self.adaptive_temperature.temperature \
                if self.adaptive_temperature else cfg.temperature
            # 2. Collect: generate and score (E3: a pilot first, the rest of the budget by its
            # outcome); every process holds the whole batch.
            batch = self._budgeted(step, indices, epoch, temperature)
            dropped, extra_metrics = 0, {}
            if cfg.uses("dynamic_sampling"):  # DAPO: groups of equal rewards out, new ones in
                batch, dropped, extra_metrics = self._refill(step, batch, temperature)
            # 3. HeRL: failed groups -> hindsight prompts -> revisions -> bonus, replacement.
            start = time.perf_counter()
            train_batch, herl_metrics, revision_tokens = self._hindsight(batch)
            extra_metrics.update(herl_metrics)
            seconds = {**batch.seconds, "herl": time.perf_counter() - start}
            # 4. Advantages of the whole batch; this process's rows of it for the update.
            start = time.perf_counter()
            loss_mask = train_batch.loss_mask(cfg.mask_truncated_completions)
            estimate = self._advantages(train_batch, loss_mask)
            shard = self.update.prepare(train_batch, estimate, loss_mask)
        # 5. Policy update: the sum of the loss terms (and the stop after too many non-finite).
        coefficients = self._coefficients(step)
        update = self.update.step(shard, self.lr_at(step), step, coefficients)
        self.failures.check_update(step, update["update_skipped"])
        seconds["update"] = time.perf_counter() - start
        # 6. Controllers observe: the algorithm (KL), pass rates -> difficulty, entropy -> the
        # next temperature or entropy bonus.
        self.algorithm.observe(estimate)
        if self.guide:
            self.guide.observe(self.model)
        if self.budget:
            self.budget.observe(self._ids(rows), batch.passes_by_prompt())
        if self.entropy_bonus:
            extra_metrics["entropy_coef"] = coefficients["entropy"]
            self.entropy_bonus.observe(update["entropy"])
        # 7. Metrics and the completions table.
        self.tokens_total += batch.generated_tokens + dropped + revision_tokens
        metrics = step_metrics(step, batch, {**update, **estimate.metrics}, seconds,
                               self.tokens_total, self.lr_at(step),
                               samples_per_prompt=self.budget is not None)
        metrics.update(extra_metrics)
        if self.adaptive_temperature:
            metrics["entropy_target"] = self.adaptive_temperature.current_target(step)
            self.adaptive_temperature.observe(step, update["entropy"])
        self._log_completions(step, batch, train_batch, estimate)
        return metrics

    def _coefficients(self, step: int) -> dict[str, float]:
        """Loss-term weights that change between steps: the adapted entropy bonus, a decaying
        supervised term."""
        out = {"entropy": self.entropy_bonus.coef} if self.entropy_bonus else {}
        herl = self.cfg.herl
        if self.hindsight and herl.sft_coef and herl.sft_decay == "linear":
            out["sft"] = herl.sft_coef * max(0.0, 1 - (step - 1) / self.cfg.max_steps)
        return out

    def _budgeted(self, step: int, indices: list[int], epoch: int,
                  temperature: float) -> ScoredBatch:
        """The step's prompts, collected with the samples E3's budget gives each (after a
        pilot, when it pilots) or ``num_generations`` each."""
        ids = self._ids([self.train_rows[i] for i in indices])
        if not (self.budget and self.budget.piloting(epoch)):
            counts = self.budget.allocate(ids, step, epoch) if self.budget \
                else [self.cfg.num_generations] * len(indices)
            return self._collect(step, indices, counts, temperature)
        pilot = self._collect(step, indices, [self.budget.pilot] * len(indices), temperature)
        extra = self.budget.after_pilot(ids, pilot.passes_by_prompt(), step)
        more = [j for j, e in enumerate(extra) if e]
        rest = self._collect(step, [indices[j] for j in more], [extra[j] for j in more],
                             temperature)
        return pilot.joined(rest, more, self.tokenizer.pad_token_id)

    def _collect(self, step: int, indices: list[int], counts: list[int],
                 temperature: float) -> ScoredBatch:
        """The prompts ``indices``, ``counts[i]`` samples each, generated and scored."""
        batch = self.collect([self.train_rows[i] for i in indices],
                             [self.prompt_ids[i] for i in indices], counts,
                             [temperature] * len(indices), self.cfg.max_completion_length)
        self.failures.check_rewards(step, batch)
        return batch

    def _refill(self, step: int, batch: ScoredBatch,
                temperature: float) -> tuple[ScoredBatch, int, dict]:
        """Dynamic sampling: new prompts' groups until the step holds enough informative ones."""
        cfg = self.cfg
        selection = Selection(batch, cfg.prompts_per_step, cfg.dynamic_sampling.max_rounds,
                              self.tokenizer.pad_token_id)
        while selection.missing:
            indices, _ = self.prompts.next(selection.missing)
            selection.add(self._collect(step, indices, [cfg.num_generations] * len(indices),
                                        temperature))
        return selection.result()

    def _hindsight(self, batch: ScoredBatch) -> tuple[TrainBatch, dict, int]:
        """HeRL's plan, the revisions it asks for, and the batch they make; the revisions'
        tokens. Without HeRL, the scored batch as it is."""
        if not self.hindsight:
            return TrainBatch.of(batch), {}, 0
        plan = self.hindsight.plan(batch)
        revisions = self.guide_collect(*plan.request) if plan.request else None
        train_batch, metrics = self.hindsight.merge(batch, plan, revisions,
                                                    self.guide_logprobs.policy)
        if self.cfg.herl.distils:
            train_batch, taught = distillation_targets(self.hindsight, batch, train_batch,
                                                       self.guide_logprobs)
            metrics.update(taught)
        return train_batch, metrics, revisions.generated_tokens if revisions else 0

    def _advantages(self, batch: TrainBatch, loss_mask: torch.Tensor) -> Advantages:
        estimate = partial(self.algorithm.advantages, logprobs=self.logprobs)
        if self.hindsight:
            return self.hindsight.advantages(batch, loss_mask, estimate)
        return estimate(batch, loss_mask)

    @staticmethod
    def _ids(rows: list[dict]) -> list[str]:
        return [str(r["prompt_id"]) for r in rows]

    def _log_completions(self, step: int, batch: ScoredBatch, train_batch: TrainBatch,
                         estimate: Advantages) -> None:
        every = self.cfg.log_completions_every
        if not (every and step % every == 0 and self.dist.is_main):
            return
        n = len(batch)  # replayed revisions after these are not this step's samples
        prompts = [batch.rows[g]["prompt"] for g in train_batch.rollout.group_ids[:n].tolist()]
        log_completions(self.out / "completions.jsonl", step, prompts, train_batch.texts[:n],
                        train_batch.rewards[:n].tolist(), estimate.advantages[:n, 0].tolist(),
                        revisions=None if train_batch.trained_under is None
                        else train_batch.trained_under[:n])

    # --- what the run loop asks --------------------------------------------------------------
    def evaluate(self, stage: str = "after", pass_k: list[int] | None = None) -> dict | None:
        """Held-out greedy accuracy (with pass@k, by default ``eval_pass_k`` before and after
        training), evaluated by the first process (None elsewhere); every process takes part
        in gathering the weights under FSDP."""
        if pass_k is None:
            pass_k = self.cfg.eval_pass_k if stage != "during" else ()
        with self.dist.gathered(), precision(self.model, self.cfg.bf16):
            if not self.dist.is_main or not self.eval_rows:
                return None
            if isinstance(self.collect, AgentCollector):  # episodes with tools
                return self.collect.evaluate(self.eval_rows, self.cfg.max_completion_length)
            return evaluate(self.engine, self.tokenizer, self.eval_rows, self.scorer.funcs[0],
                            self.cfg.max_completion_length, pass_k=tuple(pass_k),
                            temperature=self.cfg.eval_temperature,
                            threshold=self.cfg.success_threshold, codec=self.codec,
                            reward_timeout=self.cfg.reward_timeout)

    def done(self) -> bool:
        limit = self.cfg.max_generated_tokens
        return limit is not None and self.tokens_total >= limit

    def _parts(self) -> dict:
        """What a checkpoint holds besides weights, optimizer and RNG states."""
        parts = {"sampler": self.prompts, "budget": self.budget,
                 "temperature": self.adaptive_temperature, "hindsight": self.hindsight,
                 "entropy_bonus": self.entropy_bonus}
        return {name: part for name, part in parts.items() if part is not None}

    def state(self) -> dict:
        return {"tokens_total": self.tokens_total, "algorithm": self.algorithm.state(),
                **{name: part.state() for name, part in self._parts().items()}}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.algorithm.tensors(), **(self.guide.tensors() if self.guide else {})}

    def load(self, state: dict) -> None:
        self.tokens_total = state["tokens_total"]
        for name, part in self._parts().items():
            part.load(state[name])
        self.algorithm.load(state.get("algorithm", {}), state["tensors"])
        if self.guide:
            self.guide.load(state["tensors"])

    def boundary_parts(self) -> dict:
        """What a step changes before its update: the data position, HeRL's slot generator and
        the budget's pass."""
        parts = {"sampler": self.prompts, "hindsight": self.hindsight, "budget": self.budget}
        return {name: part for name, part in parts.items() if part is not None}

    def save_config(self, out) -> None:
        save_config(self.cfg, out / "config.yaml")

    def tracker_config(self) -> dict | None:
        return asdict(self.cfg) if isinstance(self.cfg.dataset, str) else None

    def summary(self) -> dict:
        return {"tokens_generated": self.tokens_total, "model": str(self.cfg.model),
                "method": self.cfg.method}


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

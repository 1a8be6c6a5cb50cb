"""``explorl rm``: a Bradley-Terry reward model from preference pairs.

The model is any causal LM's trunk with a scalar head (``AutoModelForSequenceClassification``,
``num_labels=1``), reading the reward at the last token of prompt + answer. The loss of a pair
is ``-log sigmoid(r_chosen - r_rejected - margin)`` (Bradley and Terry 1952; InstructGPT,
Ouyang et al. 2022), plus ``center_rewards_coefficient * (r_chosen + r_rejected)^2`` when set,
which keeps rewards centred on zero (Eisenstein et al. 2023), as TRL's ``RewardConfig`` names
it. ``final/`` loads with transformers' ``AutoModelForSequenceClassification`` and is a reward
function for training: ``reward_funcs=[runs/rm]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorl.config import RMConfig
from explorl.data.preferences import load_pairs, pair_text
from explorl.data.tasks import PromptSampler
from explorl.distributed import Parallel
from explorl.errors import UserError
from explorl.interrupts import Interrupts
from explorl.rewards.reward_model import load_reward_backbone, rewards_of
from explorl.run import RunLoop, RunSettings, linear_warmup


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor,
                       center_coefficient: float | None = None) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_c - r_r - margin)`` over pairs, plus the centring term
    ``coef * mean((r_c + r_r)^2)`` when ``center_coefficient`` is given."""
    loss = -F.logsigmoid(chosen - rejected - margin).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def pair_rewards(model, tokenizer, pairs: list[dict], max_length: int,
                 batch_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and of the rejected answers, one forward pass over both."""
    texts = [pair_text(tokenizer, p["prompt"], p["chosen"]) for p in pairs] + \
        [pair_text(tokenizer, p["prompt"], p["rejected"]) for p in pairs]
    rewards = rewards_of(model, tokenizer, texts, max_length, batch_size)
    return rewards[:len(pairs)], rewards[len(pairs):]


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, pairs: list[dict], max_length: int) -> dict:
    """Share of pairs whose chosen answer the model scores higher, and the mean margin."""
    was_training = model.training
    model.eval()
    chosen, rejected = pair_rewards(model, tokenizer, pairs, max_length, batch_size=256)
    model.train(was_training)
    return {"accuracy": float((chosen > rejected).float().mean()),
            "margin": float((chosen - rejected).mean()), "n": len(pairs)}


def split_pairs(cfg: RMConfig) -> tuple[list[dict], list[dict]]:
    pairs = load_pairs(cfg.dataset, name="dataset")
    if cfg.eval_dataset is not None:
        return pairs, load_pairs(cfg.eval_dataset, name="eval_dataset")
    # held out by prompt: pairs of one prompt stay on one side
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(repr(pair["prompt"]) if pair["prompt"] is not None else i, []).append(i)
    order = np.random.default_rng(cfg.seed).permutation(len(groups))
    keys, want, held = list(groups), max(1, round(cfg.eval_fraction * len(pairs))), []
    for k in order:
        if len(held) >= want:
            break
        held += groups[keys[k]]
    if len(held) >= len(pairs):
        raise UserError(f"dataset: {len(pairs)} pair(s) leave none to train on after holding "
                        f"out eval_fraction={cfg.eval_fraction} of the prompts; give more pairs "
                        "or an eval_dataset")
    rest = sorted(set(range(len(pairs))) - set(held))
    return [pairs[i] for i in rest], [pairs[i] for i in held]


class RewardModelTrainer(RunLoop):
    """Bradley-Terry training with held-out pairwise accuracy before and after, metrics,
    plots and checkpoints that resume exactly. Bad input fails in the constructor."""

    def __init__(self, cfg: RMConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.train_pairs, self.eval_pairs = split_pairs(cfg)
        self.model, self.tokenizer = load_reward_backbone(cfg.model)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.sampler = PromptSampler(len(self.train_pairs), min(cfg.batch_size,
                                                                len(self.train_pairs)), cfg.seed)
        max_steps = cfg.max_steps or math.ceil(
            cfg.num_epochs * len(self.train_pairs) / self.sampler.batch)
        self.settings = RunSettings(cfg.output_dir, max_steps, cfg.eval_every, cfg.save_every,
                                    cfg.save_total_limit, cfg.resume, cfg.progress, cfg.plots,
                                    desc="rm")
        self.out, self.dist, self.interrupts = Path(cfg.output_dir), Parallel(), Interrupts()

    @property
    def max_steps(self) -> int:
        return self.settings.max_steps

    def step(self, step: int) -> dict:
        cfg = self.cfg
        indices, epoch = self.sampler.next()
        pairs = [self.train_pairs[i] for i in indices]
        chosen, rejected = pair_rewards(self.model, self.tokenizer, pairs, cfg.max_length)
        margin = torch.tensor([p["margin"] for p in pairs])
        loss = bradley_terry_loss(chosen, rejected, margin, cfg.center_rewards_coefficient)
        lr = linear_warmup(cfg.learning_rate, cfg.warmup_steps, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                         cfg.max_grad_norm))
        self.optimizer.step()
        chosen, rejected = chosen.detach(), rejected.detach()
        return {"step": step, "epoch": epoch, "loss": loss.item(),
                "accuracy": float((chosen > rejected).float().mean()),
                "margin": float((chosen - rejected).mean()),
                "reward/chosen": float(chosen.mean()), "reward/rejected": float(rejected.mean()),
                "grad_norm": grad_norm, "lr": lr}

    def evaluate(self, stage: str = "after") -> dict:
        return pairwise_accuracy(self.model, self.tokenizer, self.eval_pairs, self.cfg.max_length)

    def state(self) -> dict:
        return {"sampler": self.sampler.state()}

    def load(self, state: dict) -> None:
        self.sampler.load(state["sampler"])

    def save_config(self, out: Path) -> None:
        (out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))

    def summary(self) -> dict:
        return {"train_pairs": len(self.train_pairs), "eval_pairs": len(self.eval_pairs),
                "model": self.cfg.model}


__all__ = ["RMConfig", "RewardModelTrainer", "bradley_terry_loss", "pairwise_accuracy"]

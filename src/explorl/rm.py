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
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from explorl.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_final
from explorl.config import RMConfig
from explorl.data.preferences import load_pairs, pair_text
from explorl.data.tasks import PromptSampler
from explorl.errors import UserError
from explorl.models.policy import disable_dropout, load_tokenizer, resolve_model_path
from explorl.output_lock import OutputLock
from explorl.tracking import MetricsLog, Progress, plot_run, truncate_metrics


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor,
                       center_coefficient: float | None = None) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_c - r_r - margin)`` over pairs, plus the centring term
    ``coef * mean((r_c + r_r)^2)`` when ``center_coefficient`` is given."""
    loss = -F.logsigmoid(chosen - rejected - margin).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def load_reward_backbone(name: str):
    """A causal LM (or a trained reward model) as a sequence classifier with one output."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(name), num_labels=1, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise UserError(f"model={name}: cannot load it as a reward model "
                        f"({str(e).splitlines()[0]})") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)  # chosen and rejected are scored by the same function
    return model, tokenizer


def rewards_of(model, tokenizer, texts: list[str], max_length: int,
               batch_size: int = 0) -> torch.Tensor:
    """The model's scalar reward of each text, read at its last token (left padding)."""
    out = []
    size = batch_size or len(texts)
    for s in range(0, len(texts), size):
        ids = [tokenizer(t, add_special_tokens=False).input_ids[-max_length:]
               for t in texts[s:s + size]]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
        out.append(model(**{k: v.to(model.device) for k, v in inputs.items()}).logits[:, 0])
    return torch.cat(out).float()


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


class RewardModelTrainer:
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
        self.max_steps = cfg.max_steps or math.ceil(
            cfg.num_epochs * len(self.train_pairs) / self.sampler.batch)
        self.out = Path(cfg.output_dir)
        self.step_done, self.before = 0, None

    def step(self, step: int) -> dict:
        cfg = self.cfg
        indices, epoch = self.sampler.next()
        pairs = [self.train_pairs[i] for i in indices]
        chosen, rejected = pair_rewards(self.model, self.tokenizer, pairs, cfg.max_length)
        margin = torch.tensor([p["margin"] for p in pairs])
        loss = bradley_terry_loss(chosen, rejected, margin, cfg.center_rewards_coefficient)
        lr = cfg.learning_rate * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps \
            else cfg.learning_rate
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

    def evaluate(self) -> dict:
        return pairwise_accuracy(self.model, self.tokenizer, self.eval_pairs, self.cfg.max_length)

    def train(self) -> dict:
        lock = OutputLock(self.out)
        lock.acquire()
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> dict:
        cfg, start = self.cfg, time.perf_counter()
        log = self._prepare_output()
        if self.before is None:
            self.before = self.evaluate()
        progress = Progress(self.max_steps, initial=self.step_done, enabled=cfg.progress,
                            desc="rm")
        try:
            for step in range(self.step_done + 1, self.max_steps + 1):
                metrics = self.step(step)
                last = step == self.max_steps
                if last or cfg.eval_every and step % cfg.eval_every == 0:
                    metrics["eval/accuracy"] = self.evaluate()["accuracy"]
                log.write(metrics)
                progress.update(metrics)
                self.step_done = step
                if last or cfg.save_every and step % cfg.save_every == 0:
                    self._checkpoint(step)
        finally:
            progress.close()
            log.close()
        return self._finish(time.perf_counter() - start)

    def _prepare_output(self) -> MetricsLog:
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoints = list_checkpoints(self.out)
        if self.cfg.resume == "never":
            for p in checkpoints:
                shutil.rmtree(p)
            checkpoints = []
        if checkpoints:
            state = load_checkpoint(checkpoints[-1], self.model, self.optimizer)
            self.step_done, self.before = state["step"], state["before"]
            self.sampler.load(state["sampler"])
            truncate_metrics(self.out / "metrics.jsonl", self.step_done)
        (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        return MetricsLog(self.out / "metrics.jsonl", append=bool(checkpoints))

    def _checkpoint(self, step: int) -> None:
        save_checkpoint(self.out, step, self.model, self.tokenizer, self.optimizer.state_dict(),
                        {"before": self.before, "sampler": self.sampler.state()},
                        self.cfg.save_total_limit)

    def _finish(self, seconds: float) -> dict:
        after = self.evaluate()
        summary = {"before": self.before, "after": after, "steps": self.step_done,
                   "train_pairs": len(self.train_pairs), "eval_pairs": len(self.eval_pairs),
                   "train_seconds": round(seconds, 1), "model": self.cfg.model}
        save_final(self.out, self.model, self.tokenizer, summary)
        if self.cfg.plots:
            plot_run(self.out)
        return summary


__all__ = ["RMConfig", "RewardModelTrainer", "bradley_terry_loss", "pairwise_accuracy"]

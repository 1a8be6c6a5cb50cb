"""Offline training: an algorithm learns from a fixed data set of scored samples.

``explorl train method=ilql dataset=samples.jsonl`` (or ``method=filtered_bc``): the rows
``explorl sample`` writes (prompt, completion, reward) are tokenised once; each step draws
``train_batch_size`` of them, the algorithm (:mod:`explorl.algorithms.ilql`,
:mod:`explorl.algorithms.filtered_bc`) gives the loss, one optimizer step follows and the
algorithm updates anything slow (ILQL's target heads). Nothing is sampled while training; the
held-out set (``eval_dataset``: a file, or a built-in task's held-out split by its name) is
decoded greedily before and after, the way the algorithm decodes (ILQL's value shift).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from explorl.algorithms import build_algorithm
from explorl.batch import OfflineBatch
from explorl.config import TrainConfig, save_config, validate
from explorl.data.preferences import load_scored
from explorl.data.prompts import PromptCodec
from explorl.data.tasks import PromptSampler, load_task
from explorl.devices import resolve_device
from explorl.distributed import Parallel
from explorl.errors import TrainingStopped, UserError
from explorl.evaluation import evaluate
from explorl.interrupts import Interrupts
from explorl.models import lora
from explorl.models.policy import build_policy, load_tokenizer, precision
from explorl.optim import adamw, set_seed
from explorl.rewards.base import resolve
from explorl.rewards.judge import build_judge
from explorl.rewards.rubric import RubricReward
from explorl.rollout import build_engine
from explorl.rollout.engine import left_pad
from explorl.run import RunLoop, RunSettings, linear_warmup


class OfflineTrainer(RunLoop):
    """Trains ``cfg.method`` (``ilql`` or ``filtered_bc``) on ``cfg.dataset``'s scored samples.
    Bad input (config, rows, lengths, model) fails in the constructor, before anything is
    written."""

    def __init__(self, config: TrainConfig | None = None, **overrides):
        cfg = replace(config or TrainConfig(method="ilql"), **overrides)
        validate(cfg)
        if not cfg.offline:
            raise UserError(f"method={cfg.method}: not an offline method (ilql, filtered_bc)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"method={cfg.method}: offline training runs in one process")
        self.cfg = cfg
        set_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model)
        self.codec = PromptCodec(self.tokenizer, cfg.apply_chat_template, cfg.max_prompt_length)
        self.model, _ = build_policy(cfg, resolve_device(cfg.device, cfg.bf16))
        self.algorithm = build_algorithm(cfg, self.model)
        self.samples = self._encode(self.algorithm.select(load_scored(cfg.dataset)))
        self.eval_rows, self.reward = self._held_out()
        trainable = lora.trainable_parameters(self.model) if cfg.lora_r \
            else list(self.model.parameters())
        self.params = trainable + self.algorithm.parameters()
        self.optimizer = adamw(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                               betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.sampler = PromptSampler(len(self.samples), min(cfg.train_batch_size,
                                                            len(self.samples)), cfg.seed)
        self.engine = build_engine(cfg, self.model, self.tokenizer)
        self.settings = RunSettings(cfg.output_dir, cfg.max_steps, cfg.eval_every,
                                    cfg.save_every, cfg.save_total_limit, cfg.resume,
                                    cfg.progress, cfg.plots, desc=cfg.method)
        self.out, self.dist, self.interrupts = Path(cfg.output_dir), Parallel(), Interrupts()
        self.nonfinite_run = 0

    # --- set-up ------------------------------------------------------------------------------
    def _encode(self, rows: list[dict]) -> list[tuple[list[int], list[int], float]]:
        """(prompt ids, completion ids + EOS, reward) per row; a row longer than the model's
        positions is refused, naming it."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        eos = self.tokenizer.eos_token_id
        out = []
        for row in rows:
            text = row["completion"]
            text = text[-1]["content"] if isinstance(text, list) else text
            prompt = self.codec.encode(row["prompt"])
            # a completion cut off by the length limit did not choose to stop: no EOS to learn
            completion = self.tokenizer(text, add_special_tokens=False).input_ids + \
                ([] if row["truncated"] else [eos])
            if not completion:
                raise UserError(f"{row['where']}: completion: empty and truncated (no token "
                                "to learn from)")
            if limit is not None and len(prompt) + len(completion) > limit:
                raise UserError(f"{row['where']}: completion: {len(completion)} tokens (EOS "
                                f"included) after a {len(prompt)}-token prompt exceed the "
                                f"model's {limit} positions")
            out.append((prompt, completion, row["reward"]))
        return out

    def _held_out(self) -> tuple[list[dict], tuple | None]:
        """The held-out rows and the reward function that grades them."""
        cfg = self.cfg
        if cfg.eval_dataset is None:
            return [], None
        # a task's held-out split (built-in, reasoning-gym, CHAMP), or the rows of a file
        task = load_task(replace(cfg, dataset=cfg.eval_dataset, eval_dataset=None))
        rows = task.eval or task.train[: cfg.eval_size]
        spec = (cfg.reward_funcs or [task.default_reward])[0]
        if spec == "rubric":
            return rows, ("rubric", RubricReward(cfg.rubric_reward, build_judge(cfg.judge, rows)))
        return rows, resolve(spec, self.model.device)

    # --- one step ----------------------------------------------------------------------------
    def batch(self, indices: list[int]) -> OfflineBatch:
        prompts, completions, rewards = zip(*(self.samples[i] for i in indices))
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad(list(prompts), pad)
        width = max(len(c) for c in completions)
        completion_ids = torch.full((len(indices), width), pad, dtype=torch.long)
        completion_mask = torch.zeros_like(completion_ids)
        for i, c in enumerate(completions):
            completion_ids[i, :len(c)] = torch.tensor(c)
            completion_mask[i, :len(c)] = 1
        device = self.model.device
        return OfflineBatch(prompt_ids.to(device), prompt_mask.to(device),
                            completion_ids.to(device), completion_mask.to(device),
                            torch.tensor(rewards, dtype=torch.float32, device=device))

    def step(self, step: int) -> dict:
        """One optimizer step on the next ``train_batch_size`` samples (in chunks of
        ``micro_batch_size``, gradients accumulated); returns its metrics."""
        cfg = self.cfg
        indices, epoch = self.sampler.next()
        lr = linear_warmup(cfg.learning_rate, cfg.warmup_steps, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        size = cfg.micro_batch_size or len(indices)
        chunks = [self.batch(indices[s:s + size]) for s in range(0, len(indices), size)]
        total = sum(int(c.completion_mask.sum()) for c in chunks)
        loss, parts = torch.zeros(()), []
        for chunk in chunks:
            # every loss term is a mean over tokens: a chunk weighs by its share of them
            share = int(chunk.completion_mask.sum()) / total
            with precision(self.model, cfg.bf16):
                chunk_loss, metrics = self.algorithm.loss(self.model, chunk)
            (chunk_loss * share).backward()
            loss = loss + chunk_loss.detach().cpu() * share
            parts.append((share, metrics))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        finite = bool(torch.isfinite(loss) and torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.algorithm.after_step()
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_run = 0 if finite else self.nonfinite_run + 1
        if self.nonfinite_run >= cfg.nonfinite_limit:
            raise TrainingStopped(f"step {step}: {self.nonfinite_run} non-finite losses or "
                                  "gradients in a row; lower learning_rate")
        rewards = torch.cat([c.rewards for c in chunks])
        return {"step": step, "epoch": epoch, "loss": float(loss),
                "reward/mean": float(rewards.mean()), "grad_norm": float(grad_norm), "lr": lr,
                "update_skipped": int(not finite), **weighted(parts)}

    # --- what the run loop asks --------------------------------------------------------------
    def evaluate(self, stage: str = "after", pass_k=None) -> dict | None:
        """Held-out greedy accuracy (and pass@k before and after training), decoded as the
        algorithm decodes; before training as the plain model, before any head is trained."""
        if not self.eval_rows:
            return None
        cfg = self.cfg
        if pass_k is None:
            pass_k = cfg.eval_pass_k if stage != "during" else ()
        decode = stage != "before"
        with precision(self.model, cfg.bf16), \
                (self.algorithm.decoding(self.model) if decode else nullcontext()):
            return evaluate(self.engine, self.tokenizer, self.eval_rows, self.reward,
                            cfg.max_completion_length, pass_k=tuple(pass_k),
                            temperature=cfg.eval_temperature, threshold=cfg.success_threshold,
                            codec=self.codec, reward_timeout=cfg.reward_timeout)

    def state(self) -> dict:
        return {"sampler": self.sampler.state(), "algorithm": self.algorithm.state()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.algorithm.tensors()

    def load(self, state: dict) -> None:
        self.sampler.load(state["sampler"])
        self.algorithm.load(state["algorithm"], state["tensors"])

    def save_config(self, out: Path) -> None:
        save_config(self.cfg, out / "config.yaml")

    def final_extra(self, folder: Path) -> None:
        self.algorithm.save(folder)

    def summary(self) -> dict:
        return {"train_samples": len(self.samples), "tokens_generated": 0,
                "model": str(self.cfg.model), "method": self.cfg.method}


def weighted(parts: list[tuple[float, dict]]) -> dict:
    """Chunk metrics as whole-batch ones: each a mean weighted by the chunks' token shares,
    over the chunks where it is known."""
    out = {}
    for key in parts[0][1]:
        known = [(w, m[key]) for w, m in parts if m.get(key) is not None]
        out[key] = sum(w * v for w, v in known) / sum(w for w, _ in known) if known else None
    return out


__all__ = ["OfflineTrainer"]

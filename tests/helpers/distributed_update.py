"""One update on a fixed, hand-built batch, split over the processes of a distributed run.

``tests/test_distributed.py`` runs this module under ``accelerate launch`` (2 CPU processes,
DDP, FSDP or DeepSpeed ZeRO-2)
and the same update on the whole batch in one process, then compares gradients and weights.
It also trains 4 HeRL steps straight, and 2 + 2 with a resume, for the exact-resume check.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from explorl import TrainConfig, Trainer
from explorl.algorithms.advantages import AdvantageInputs, compute_advantages
from explorl.rollout.engine import Rollout, left_pad
from explorl.trainer import Batch

COUNTS = [2, 3, 6, 5]  # samples per prompt, uneven as under E3: 5 rows on rank 0, 11 on rank 1
CASES = {  # each a different normaliser; dapo with micro-batches needs a zero-weight filler pass
    "dapo": dict(loss_type="dapo", micro_batch_size=4, beta=0.04, entropy_coef=0.01),
    "grpo": dict(loss_type="grpo", herl_gamma=0.5, gradient_checkpointing=True),
    "dr_grpo": dict(loss_type="dr_grpo", kl_estimator="k1", beta=0.1),
}
SMALL = dict(eval_size=8, task_train_size=64, progress=False, plots=False, learning_rate=1e-3,
             max_grad_norm=1e6)  # no clipping: a gradient of the wrong scale must show


def trainer_for(case: str, out: str) -> Trainer:
    return Trainer(TrainConfig(output_dir=out, prompts_per_step=len(COUNTS), **SMALL,
                               **CASES[case]))


def fixed_batch(trainer: Trainer, width: int = 6) -> Batch:
    """Random completions of varied length and temperature, a masked reward, two off-policy
    (revision) rows: every term of the loss and every normaliser count matters."""
    g = torch.Generator().manual_seed(0)
    prompts = [trainer.prompt_ids[i] for i in range(len(COUNTS)) for _ in range(COUNTS[i])]
    n, pad = len(prompts), trainer.tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad(prompts, pad)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    ids = torch.randint(4, trainer.model.config.vocab_size, (n, width), generator=g)
    rollout = Rollout(prompt_ids, prompt_mask, ids.masked_fill(mask == 0, pad), mask,
                      0.7 + 0.6 * torch.rand(n, generator=g),
                      torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS)),
                      torch.zeros(n, dtype=torch.bool))
    rewards = torch.randint(0, 2, (n,), generator=g).double()
    rewards[7] = float("nan")
    loss_mask = mask.clone()
    loss_mask[rewards.isnan()] = 0
    advantages = compute_advantages("grpo", AdvantageInputs(rewards, rollout.group_ids,
                                                            loss_mask), "group")
    revision = torch.zeros(n, dtype=torch.bool)
    revision[[1, 9]] = True
    return Batch(rollout, advantages, loss_mask, None, trainer.ref_logps(rollout), revision)


def rows_of(batch: Batch, rows: slice) -> Batch:
    def cut(x):
        return None if x is None else x[rows]

    rollout = Rollout(**{f.name: getattr(batch.rollout, f.name)[rows]
                         for f in fields(Rollout)})
    return Batch(rollout, batch.advantages[rows], batch.loss_mask[rows], cut(batch.old_logps),
                 cut(batch.ref_logps), cut(batch.revision), cut(batch.revision_old_logps))


def update(trainer: Trainer, batch: Batch) -> tuple[dict[str, torch.Tensor], dict]:
    """Gradients and weights after one update, and its metrics."""
    def full(t):  # a sharded (FSDP) tensor is gathered whole
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    grads = {}
    if trainer.dist.deepspeed:  # ZeRO partitions the gradients and clears them in its step
        from deepspeed.utils import safe_get_full_grad

        step = trainer.dist.step

        def capture(*args):
            for name, p in trainer.model.named_parameters():
                grads[name] = safe_get_full_grad(p).detach().clone()
            return step(*args)

        trainer.dist.step = capture
    metrics = trainer.update(batch)
    tensors = {}
    for name, p in trainer.model.named_parameters():
        tensors[f"grad.{name}"] = grads[name] if grads else full(p.grad).detach().clone()
        tensors[f"weight.{name}"] = full(p).detach().clone()
    # Adam's state as a checkpoint stores it: whole, keyed by parameter index (gathered to the
    # first process under FSDP and DeepSpeed)
    state = trainer.dist.optimizer_state(trainer.optimizer)["state"]
    for i, (name, _) in enumerate(trainer.model.named_parameters() if state else []):
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"{key}.{name}"] = state[i][key].clone()
    return tensors, metrics


def main(out: Path) -> None:
    for case in CASES:
        trainer = trainer_for(case, str(out / "unused"))
        rank, world = trainer.dist.rank, trainer.dist.world
        batch = fixed_batch(trainer)
        share = len(COUNTS) // world  # this process's prompts, as the trainer shards them
        first = sum(COUNTS[:rank * share])
        mine = slice(first, first + sum(COUNTS[rank * share:(rank + 1) * share]))
        tensors, metrics = update(trainer, rows_of(batch, mine))
        metrics["batch_std"] = float(trainer.dist.std(batch.advantages[mine, 0]))
        save_file(tensors, str(out / f"{case}-rank{rank}.safetensors"))
        (out / f"{case}-rank{rank}.json").write_text(json.dumps(metrics))
    resume = dict(prompts_per_step=4, num_generations=4, save_every=2, budget="e3",
                  budget_min=2, budget_max=6, micro_batch_size=3, temperature_control="e3",
                  entropy_target_steps=1, scale_rewards="batch", method="herl",
                  rubric_reward="strict", herl_candidate_limit=2, **SMALL)
    Trainer(TrainConfig(output_dir=str(out / "straight"), max_steps=4, **resume)).train()
    Trainer(TrainConfig(output_dir=str(out / "resumed"), max_steps=2, **resume)).train()
    Trainer(TrainConfig(output_dir=str(out / "resumed"), max_steps=4, **resume)).train()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

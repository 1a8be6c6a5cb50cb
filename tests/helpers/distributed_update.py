"""One update on a fixed, hand-built batch, split over the processes of a distributed run.

``tests/test_distributed.py`` runs this module under ``accelerate launch`` (2 CPU processes,
DDP, FSDP or DeepSpeed ZeRO-2) and the same update in one process, then compares gradients and
weights. Every process is handed the whole batch, as the trainer hands it after collecting; the
update takes its own balanced share of the rows. It also collects one request (each process
generates and scores its share; all must hold the same whole batch), the same for multi-turn
episodes of the calculator task, and trains 4 HeRL steps
straight, and 2 + 2 with a resume, for the exact-resume check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from explorl import TrainConfig, Trainer
from explorl.batch import Advantages, Rollout, TrainBatch
from explorl.config import E3Config, EntropyConfig, HeRLConfig
from explorl.exploration.hindsight import RevisionSurrogate
from explorl.rollout.engine import left_pad

COUNTS = [2, 3, 6, 6]  # samples per prompt, uneven as under E3; 17 rows: 9 and 8 per process
CASES = {  # each a different normaliser; dapo in micro-batches of 4 needs a filler pass (3 vs 2)
    "dapo": dict(loss_type="dapo", micro_batch_size=4, beta=0.04,
                 entropy=EntropyConfig(coef=0.01)),
    "grpo": dict(loss_type="grpo", gradient_checkpointing=True),
    "dr_grpo": dict(loss_type="dr_grpo", kl_estimator="k1", beta=0.1),
}
GAMMA = {"dapo": 1.0, "grpo": 0.5, "dr_grpo": 1.0}  # HeRL's shaping of the revision rows
SMALL = dict(eval_size=8, task_train_size=64, progress=False, plots=False, learning_rate=1e-3,
             max_grad_norm=1e6)  # no clipping: a gradient of the wrong scale must show


def trainer_for(case: str, out: str, **overrides) -> Trainer:
    trainer = Trainer(TrainConfig(output_dir=out, prompts_per_step=len(COUNTS), **SMALL,
                                  **{**CASES[case], **overrides}))
    return with_revision_loss(trainer, GAMMA[case])


def with_revision_loss(trainer: Trainer, gamma: float) -> Trainer:
    """HeRL's revision term for the batch's revision rows (the trainer is not a HeRL one: its
    data has no rubric), after the policy gradient, as HeRL places it."""
    trainer.update.terms.insert(1, RevisionSurrogate(gamma))
    return trainer


def fixed_batch(trainer: Trainer, width: int = 6) -> tuple[TrainBatch, torch.Tensor,
                                                           torch.Tensor]:
    """Random completions of varied length and temperature, a masked reward, two off-policy
    (revision) rows, tool answers inside some completions (tokens out of the loss, as in
    episodes): every term of the loss and every normaliser count matters. Returns the batch,
    its advantages and its loss mask."""
    g = torch.Generator().manual_seed(0)
    prompts = [trainer.prompt_ids[i] for i in range(len(COUNTS)) for _ in range(COUNTS[i])]
    n, pad = len(prompts), trainer.tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad(prompts, pad)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    ids = torch.randint(4, trainer.model.config.vocab_size, (n, width), generator=g)
    by_model = mask.clone()
    by_model[lengths >= 4, 1:3] = 0  # a two-token tool answer after the first model token
    rollout = Rollout(prompt_ids, prompt_mask, ids.masked_fill(mask == 0, pad), mask,
                      0.7 + 0.6 * torch.rand(n, generator=g),
                      torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS)),
                      torch.zeros(n, dtype=torch.bool), tool_mask=by_model)
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    rewards[7] = float("nan")
    revision = torch.zeros(n, dtype=torch.bool)
    revision[[1, 9]] = True
    batch = TrainBatch(rollout, rewards, [""] * n, rows={"policy": ~revision,
                                                         "revision": revision})
    loss_mask = batch.loss_mask(False)
    estimate = trainer.algorithm.advantages(batch, loss_mask, trainer.logprobs)
    return batch, estimate.advantages, loss_mask


def update(trainer: Trainer, batch, advantages, loss_mask) -> tuple[dict[str, torch.Tensor],
                                                                    dict]:
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
    shard = trainer.update.prepare(batch, Advantages(advantages), loss_mask)
    metrics = trainer.update.step(shard, trainer.cfg.learning_rate)
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


def collected(trainer: Trainer, level: str | None = None) -> dict:
    """One request collected (of the task's rows at ``level``, if given): what this process
    holds afterwards."""
    picked = [i for i, row in enumerate(trainer.train_rows)
              if level is None or row["level"] == level][:len(COUNTS)]
    batch = trainer.collect([trainer.train_rows[i] for i in picked],
                            [trainer.prompt_ids[i] for i in picked], COUNTS,
                            [1.0] * len(COUNTS), trainer.cfg.max_completion_length)
    rollout = batch.rollout
    return {"texts": batch.texts, "groups": rollout.group_ids.tolist(),
            "rewards": batch.rewards.total.tolist(), "passed": batch.passed.tolist(),
            "completion_ids": rollout.completion_ids.tolist(),
            "tool_tokens": None if rollout.tool_mask is None
            else int((rollout.completion_mask * (1 - rollout.tool_mask)).sum()),
            "metrics": batch.metrics}


RESUME = dict(prompts_per_step=4, num_generations=4, save_every=2, method="herl+e3",
              e3=E3Config(budget_min=2, budget_max=6), entropy=EntropyConfig(target_steps=1),
              micro_batch_size=3, scale_rewards="batch", rubric_reward="strict",
              herl=HeRLConfig(candidate_limit=2, teach="revise"), **SMALL)


def main(out: Path) -> None:
    for case in CASES:
        trainer = trainer_for(case, str(out / "unused"))
        rank = trainer.dist.rank
        tensors, metrics = update(trainer, *fixed_batch(trainer))
        save_file(tensors, str(out / f"{case}-rank{rank}.safetensors"))
        (out / f"{case}-rank{rank}.json").write_text(json.dumps(metrics))
    (out / f"collect-rank{rank}.json").write_text(json.dumps(collected(trainer)))
    episodes = Trainer(TrainConfig(output_dir=str(out / "unused"), dataset="calculator",
                                   model="tiny-tools", **SMALL))
    (out / f"episodes-rank{rank}.json").write_text(json.dumps(collected(episodes, "L7")))
    Trainer(TrainConfig(output_dir=str(out / "straight"), max_steps=4, **RESUME)).train()
    Trainer(TrainConfig(output_dir=str(out / "resumed"), max_steps=2, **RESUME)).train()
    Trainer(TrainConfig(output_dir=str(out / "resumed"), max_steps=4, **RESUME)).train()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

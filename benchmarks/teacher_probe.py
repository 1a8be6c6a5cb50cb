"""What does hindsight self-distillation's teacher know that the student does not? A probe on
``dataset=rubric_rare`` with ``model=tiny-rare``, before any training.

One step's rollouts (``--prompts`` prompts x 8 samples, T = 1) are graded; for every failed
sample the frozen model re-scores it under the hindsight prompt (its met and unmet lists shown,
then blanked: the control), exactly as ``herl.teach=distill`` builds its targets. At the two
positions that decide the hidden criterion (the last two digits before EOS) we read the
probability the teacher and the student (the same model given only the prompt) put on the
digits the tag asks for. A teacher that reads the lists puts far more mass there than the
student; the blank-list teacher should not.

    python benchmarks/teacher_probe.py --out benchmarks/results/teacher_probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from explorl import TrainConfig, Trainer
from explorl.batch import TrainBatch
from explorl.config import HeRLConfig
from explorl.data import rubric_task
from explorl.exploration.distill import distillation_targets


def digit_probability(ids: torch.Tensor, logps: torch.Tensor, row: int, pos: int,
                      token: int) -> float:
    """The probability at ``(row, pos)`` of ``token`` among the top-K ids (0 outside them)."""
    hit = (ids[row, pos] == token).nonzero()
    return float(logps[row, pos, hit[0, 0]].exp()) if len(hit) else 0.0


def probe(trainer: Trainer, lists: str, top_k: int) -> dict:
    torch.manual_seed(0)
    prompts = list(range(trainer.cfg.prompts_per_step))
    batch = trainer._collect(1, prompts, [8] * len(prompts), 1.0)
    trainer.hindsight.lists = lists
    targets, metrics = distillation_targets(trainer.hindsight, batch, TrainBatch.of(batch),
                                            trainer.guide_logprobs)
    student = trainer.logprobs.top_k(batch.rollout, top_k)
    rollout, teacher, own = batch.rollout, [], []
    for i in torch.nonzero(targets.rows["distill"]).flatten().tolist():
        row = batch.rows[int(rollout.group_ids[i])]
        ending = rubric_task.RARE_TAGS[row["prompt"][1]]
        last = int(rollout.lengths[i]) - 1  # the EOS position
        for j, digit in enumerate(ending):
            pos = last - len(ending) + j
            if pos < 0:
                continue
            token = trainer.tokenizer.convert_tokens_to_ids(digit)
            teacher.append(digit_probability(targets.teacher_ids, targets.teacher_logps, i,
                                             pos, token))
            own.append(digit_probability(*student, i, pos, token))
    return {"failed_samples": metrics["herl/distilled"], "positions": len(teacher),
            "teacher": sum(teacher) / len(teacher), "student": sum(own) / len(own)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=99)
    parser.add_argument("--out", default="benchmarks/results/teacher_probe.json")
    args = parser.parse_args()
    cfg = TrainConfig(dataset="rubric_rare", model="tiny-rare", rubric_reward="strict",
                      method="herl", prompts_per_step=args.prompts, max_completion_length=12,
                      output_dir="runs/teacher_probe", eval_size=10,
                      herl=HeRLConfig(guide="initial", distill_top_k=args.top_k))
    trainer = Trainer(cfg)
    out = {lists: probe(trainer, lists, args.top_k) for lists in ("shown", "blank")}
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Faulty rewards never kill a run; too many failures, or non-finite updates in a row, stop it
with a clear message and a checkpoint to resume from."""

import json
import math

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.cli import main
from explorl.errors import TrainingStopped

FAST = dict(eval_size=10, progress=False, plots=False, task_train_size=100, prompts_per_step=4,
            num_generations=4, save_every=0)


def flaky(prompts, completions, completion_ids=None, **columns):
    """Fails on one sample in eight in every way a reward can fail."""
    out = []
    for i, c in enumerate(completions):
        kind = i % 8
        out.append({0: math.nan, 1: math.inf, 2: None, 3: "x"}.get(kind, float(c[:1] == "1")))
    return out



def test_failed_samples_are_masked_counted_and_the_run_goes_on(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, reward_funcs=[flaky], **FAST)
    Trainer(cfg).train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # per 16 samples: 2 NaN + 2 inf + 2 non-numeric fail; 2 None do not apply (masked, not failed)
    assert [r["rewards/failed"] for r in rows] == [6, 6, 6]
    assert [r["rewards/masked"] for r in rows] == [8, 8, 8]


def test_too_many_failures_stop_with_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", f"output_dir={out}", "max_steps=3", "eval_size=10", "progress=false",
                 "plots=false", "task_train_size=100", "prompts_per_step=4", "num_generations=4",
                 "reward_funcs=tests.helpers.failing:always_raises"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1
    assert err[0].startswith("explorl: stopped: step 1: rewards failed on 16 of 16 samples")
    assert "grader down" in err[0]
    assert (out / "checkpoint-0" / "state.json").exists()


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=5, nonfinite_limit=2,
                      learning_rate=1e-3, **FAST)
    trainer = Trainer(cfg)
    original = trainer.update.step

    def poisoned(batch, lr, step, coefficients):  # NaN gradients from step 2 on
        if trainer.step_done >= 1:
            for p in trainer.model.parameters():
                p.register_hook(lambda g: g * math.nan) if p.requires_grad else None
        return original(batch, lr, step, coefficients)

    trainer.update.step = poisoned
    with pytest.raises(TrainingStopped, match="not finite in 2 steps in a row"):
        trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update_skipped"] for r in rows] == [0, 1]
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert (tmp_path / "run" / "checkpoint-2").exists()

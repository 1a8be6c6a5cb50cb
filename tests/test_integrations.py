"""The trainer with LoRA adapters, external trackers and the completions table."""

import json

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.models.policy import load_model

FAST = dict(eval_size=20, progress=False, plots=False, task_train_size=100, prompts_per_step=4,
            num_generations=4)


def test_lora_trains_adapters_only_resumes_and_saves_a_merged_model(tmp_path):
    pytest.importorskip("peft")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, lora_r=4,
                      learning_rate=1e-2, save_every=1, beta=0.05, **FAST)
    trainer = Trainer(cfg)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if not p.requires_grad}
    trainer.train()
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "run" / "checkpoint-3" / "adapter_model.safetensors").exists()
    merged = load_model(str(tmp_path / "run"))
    base = load_model("tiny")
    assert not all(torch.equal(a, b) for a, b in zip(merged.parameters(), base.parameters()))
    resumed = Trainer(TrainConfig(**{**cfg.__dict__, "max_steps": 4}))
    for n, p in resumed.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])  # the base weights never move
    assert resumed.train()["steps"] == 4


def test_tensorboard_and_completions_table(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=2, report_to=["tensorboard"],
                      log_completions_every=2, **FAST)
    Trainer(cfg).train()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in
             (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and {x["step"] for x in lines} == {2}
    assert set(lines[0]) == {"step", "prompt", "completion", "reward", "advantage"}

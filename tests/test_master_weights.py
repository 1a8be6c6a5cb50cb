"""bfloat16 weights stepped through float32 masters (``bf16_weights=true``)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from explorl import TrainConfig, Trainer
from explorl.models.master_weights import MasterWeights


def sgd(params):
    return torch.optim.SGD(params, lr=1e-4)


def test_updates_below_bf16_spacing_accumulate_in_the_masters():
    """Weights of 1.0 have a bfloat16 spacing of 2^-7 = 0.0078; 100 SGD steps of 1e-4 each move
    a float32 master by 0.01, where stepping the bfloat16 weights rounds each step away."""
    direct = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    mastered = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    plain, master = sgd([direct]), MasterWeights([mastered], sgd)
    for _ in range(100):
        for p, opt in ((direct, plain), (mastered, master)):
            opt.zero_grad()
            (-p.float().sum()).backward()  # gradient -1: each step adds lr
            opt.step()
    assert torch.equal(direct, torch.ones(4, dtype=torch.bfloat16))  # every step rounded away
    torch.testing.assert_close(master.masters[0], torch.full((4,), 1.01), rtol=0, atol=1e-5)
    assert torch.equal(mastered, master.masters[0].to(torch.bfloat16))
    assert mastered.dtype == torch.bfloat16 and master.masters[0].dtype == torch.float32


def test_state_dict_resumes_masters_and_moments():
    def run(steps, opt=None, p=None):
        p = p if p is not None else torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
        opt = opt or MasterWeights([p], lambda ps: torch.optim.AdamW(ps, lr=1e-3))
        for i in range(steps):
            opt.zero_grad()
            (p.float() * torch.tensor([1.0, -2.0, 0.5]) * (i + 1)).sum().backward()
            opt.step()
        return p, opt

    p, straight = run(4)
    q, first = run(2)
    saved = first.state_dict()
    assert saved["state"][0]["master"].dtype == torch.float32
    resumed = MasterWeights([q], lambda ps: torch.optim.AdamW(ps, lr=1e-3))
    resumed.load_state_dict(saved)
    # the same last two gradients as the straight run's steps 3 and 4
    for i in (2, 3):
        resumed.zero_grad()
        (q.float() * torch.tensor([1.0, -2.0, 0.5]) * (i + 1)).sum().backward()
        resumed.step()
    assert torch.equal(resumed.masters[0], straight.masters[0]) and torch.equal(q, p)


def test_a_run_keeps_bf16_weights_and_float32_state(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), bf16_weights=True, bf16=True,
                      max_steps=2, prompts_per_step=4, num_generations=4, eval_size=8,
                      task_train_size=64, progress=False, plots=False, learning_rate=1e-3,
                      save_every=2)
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    params = list(trainer.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(params, before))
    state = trainer.optimizer.state[params[0]]
    assert state["exp_avg"].dtype == torch.float32
    saved = load_file(str(tmp_path / "run/checkpoint-2/optimizer.safetensors"))
    masters = [k for k in saved if k.endswith(".master")]
    assert len(masters) == len(params) and saved[masters[0]].dtype == torch.float32
    assert json.loads((tmp_path / "run/summary.json").read_text())["steps"] == 2

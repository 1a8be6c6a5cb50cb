"""Where a run computes: device resolution, one-line refusals, and that every tensor a step
builds lives on the model's device.

On a CPU-only machine the placement is checked by construction: a step runs under a mode that
records every tensor explorl's own code creates without naming a device (on a GPU that tensor
would sit on the CPU while the model's are on the GPU). The tests marked ``gpu`` run the same
steps on CUDA and look at the tensors themselves (``benchmarks/gpu_check.py`` runs them).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from explorl import TrainConfig, Trainer
from explorl.config import E3Config, HeRLConfig
from explorl.devices import resolve_device
from explorl.errors import UserError

SRC = str(Path(__file__).resolve().parents[1] / "src" / "explorl")
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor,
             torch.as_tensor, torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye}
# Built from Python values on purpose, then moved to the device by their callers
BUILT_ON_CPU = {"left_pad", "right_pad", "splice", "build_rollout", "compute_rewards",
                "_no_rewards", "generate"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


class DevicelessTensors(TorchFunctionMode):
    """Records ``(file, line, function)`` of each tensor that explorl's code creates without a
    ``device`` argument, outside the functions that build on the CPU on purpose."""

    def __init__(self):
        super().__init__()
        self.found: set[tuple[str, int, str]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1)
            code = caller.f_code
            if code.co_filename.startswith(SRC) and code.co_name not in BUILT_ON_CPU:
                self.found.add((code.co_filename[len(SRC) + 1:], caller.f_lineno, code.co_name))
        return func(*args, **kwargs)


def small(tmp_path, name: str, **overrides) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / name), max_steps=2, prompts_per_step=4,
                num_generations=4, eval_size=4, task_train_size=32, progress=False,
                plots=False, learning_rate=1e-3, save_every=0, eval_every=0)
    return TrainConfig(**{**base, **overrides})


STEPS = {  # every part of the step: GRPO, HeRL's revisions, E3's controllers, PPO's critic
    "grpo": dict(beta=0.04, num_iterations=2),
    "herl+e3": dict(method="herl+e3", herl=HeRLConfig(accept="equal", context="original",
                                                       teach="revise"),
                    e3=E3Config(budget=True, adaptive_temperature=True)),
    # self-distillation from a frozen guide, E3's pilot, revisions replayed in the SFT term
    "herl_distill+pilot": dict(method="herl+e3", e3=E3Config(adaptive_temperature=False),
                               herl=HeRLConfig(teach="both", context="original", sft_coef=1.0,
                                               sft_buffer=4, accept="equal")),
    "ppo": dict(method="ppo"),
}


def test_auto_is_the_cpu_without_a_gpu():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_line(spec):
    with pytest.raises(UserError, match=f"device={spec}: no CUDA GPU is visible"):
        resolve_device(spec)


@pytest.mark.parametrize("spec,local_rank,match", [
    ("cuda", "1", "device=cuda: GPU 1 asked for, 1 visible (more processes than GPUs?)"),
    ("cuda:0", "0", "device=cuda:0: under a launcher every process takes the GPU of its local"),
])
def test_a_launcher_gets_one_gpu_per_process(monkeypatch, spec, local_rank, match):
    """Under a launcher each process takes its local rank's GPU; one GPU for two processes, or
    a GPU named by index, is refused in one line (a machine with one GPU, as the launcher sees
    it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(UserError, match=re.escape(match)):
        resolve_device(spec, distributed=True)


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(UserError, match="bf16: Tesla V100-SXM2-16GB has no bfloat16 support"):
        resolve_device("auto", bf16=True)


@pytest.mark.parametrize("method", list(STEPS))
def test_a_step_builds_no_tensor_off_the_model_device(tmp_path, method):
    trainer = Trainer(small(tmp_path, method, **STEPS[method]))
    audit = DevicelessTensors()
    with audit:
        trainer.step(1)
        trainer.evaluate(pass_k=[2])
    assert not audit.found, sorted(audit.found)


def test_the_audit_sees_a_tensor_built_without_a_device():
    audit = DevicelessTensors()
    from explorl.algorithms import advantages

    with audit:  # through a function of explorl's own, as a step would call it
        advantages.group_baseline(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
        exec(compile("torch.zeros(3)", f"{SRC}/fake.py", "exec"), {"torch": torch})
    assert [f for f, _, _ in audit.found] == ["fake.py"]


# --- on a GPU -----------------------------------------------------------------------------------
def tensors_of(obj, seen=None) -> list[tuple[str, torch.Tensor]]:
    """Every tensor reachable through dataclass fields, dicts and lists of ``obj``."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, (list, tuple)) else vars(obj).items() if hasattr(obj, "__dict__") \
        else []
    for key, value in items:
        if isinstance(value, torch.Tensor):
            out.append((str(key), value))
        elif isinstance(value, (dict, list, tuple)) or hasattr(value, "__dataclass_fields__"):
            out += [(f"{key}.{k}", t) for k, t in tensors_of(value)]
    return out


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("method", list(STEPS))
def test_a_step_on_cuda_keeps_its_tensors_there(tmp_path, method):
    trainer = Trainer(small(tmp_path, method, device="cuda", **STEPS[method]))
    assert trainer.model.device.type == "cuda"
    seen = {}
    prepare = trainer.update.prepare

    def spy(batch, advantages, loss_mask):
        shard = prepare(batch, advantages, loss_mask)
        seen.update(batch=batch, shard=shard, advantages=advantages)
        return shard

    trainer.update.prepare = spy
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.step(1)
    off = [name for name, t in tensors_of(seen) if t.device.type != "cuda"]
    assert not off, off
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), before))
    assert metrics["update_skipped"] == 0


@pytest.mark.gpu
@cuda
def test_a_short_run_on_cuda_learns_and_evaluates(tmp_path):
    trainer = Trainer(small(tmp_path, "run", device="cuda", max_steps=3, bf16=True))
    summary = trainer.train()
    assert summary["after"]["n"] == 4

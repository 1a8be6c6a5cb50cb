"""Options that change how the update is computed but not what it computes: gradient
accumulation over micro-batches, gradient checkpointing and bf16 autocast."""

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.batch import TrainBatch
from tests.helpers import distributed_update as du


def trainer_with(tmp_path, **overrides) -> Trainer:
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path / "run"),
                                  prompts_per_step=len(du.COUNTS), **du.SMALL,
                                  **{**du.CASES["dapo"], "micro_batch_size": 0, **overrides}))
    return du.with_revision_loss(trainer, 1.0)


def grads_after_update(trainer: Trainer, batch) -> dict[str, torch.Tensor]:
    tensors, _ = du.update(trainer, *batch)
    return {k: v for k, v in tensors.items() if k.startswith("grad.")}


def assert_same_gradient(grads: dict, reference: dict) -> None:
    """Equal up to float32 summation order: micro-batches cut to their own longest row change
    the shapes, so the order of every sum; advantages of both signs cancel in the gradient
    (its terms are ~100x the sum), so 1e-4 of each tensor's norm (~1000 float32 epsilons)."""
    for name, g in reference.items():
        assert float((grads[name] - g).norm()) <= 1e-4 * float(g.norm()), name


def count_calls(module: torch.nn.Module, into: list):
    return module.register_forward_hook(lambda m, args, out: into.append(out.dtype))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Gradients of one float32 update over the whole batch at once."""
    trainer = trainer_with(tmp_path_factory.mktemp("ref"), micro_batch_size=0)
    return grads_after_update(trainer, du.fixed_batch(trainer))


def test_micro_batches_accumulate_the_whole_batch_gradient(tmp_path, reference):
    trainer = trainer_with(tmp_path, micro_batch_size=3)
    calls = []  # forward passes of the decoder (a hook on the LM head would unchunk it)
    trainer.model.model.register_forward_hook(lambda m, args, out: calls.append(1))
    grads = grads_after_update(trainer, du.fixed_batch(trainer))
    assert len(calls) == 6  # 17 rows in chunks of 3: six forward passes, one optimizer step
    assert_same_gradient(grads, reference)


def saved_for_backward(trainer: Trainer, batch) -> tuple[int, dict[str, torch.Tensor]]:
    """Elements the update's graph keeps for the backward pass, and the gradients."""
    kept = [0]

    def pack(t):
        kept[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grads = grads_after_update(trainer, batch)
    return kept[0], grads


def test_gradient_checkpointing_keeps_less_and_gives_the_same_gradient(tmp_path, reference):
    plain = trainer_with(tmp_path / "plain")
    kept_plain, _ = saved_for_backward(plain, du.fixed_batch(plain))
    trainer = trainer_with(tmp_path / "ckpt", gradient_checkpointing=True)
    kept, grads = saved_for_backward(trainer, du.fixed_batch(trainer))
    assert kept < 0.5 * kept_plain  # layer activations are recomputed, not kept
    for name, g in reference.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def on_policy_grads(tmp_path, bf16: bool) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """Gradients of one update on the tiny model's own samples (random completions are far
    off-policy, where bf16's rounding of very negative log-probs dominates)."""
    torch.manual_seed(0)
    trainer = trainer_with(tmp_path / f"bf16-{bf16}", bf16=bf16)
    with torch.autocast("cpu", enabled=False):  # the same samples for both
        rollout = trainer.engine.generate(trainer.prompt_ids[:8], [4] * 8, [1.0] * 8, 16)
    advantages = torch.randn(len(rollout), 1).expand_as(rollout.completion_mask).contiguous()
    batch = (TrainBatch(rollout, torch.zeros(len(rollout)), [""] * len(rollout)), advantages,
             rollout.completion_mask.clone())
    trainer.dtypes = []  # of the logits in the update's forward pass
    count_calls(trainer.model.lm_head, trainer.dtypes)
    return trainer, grads_after_update(trainer, batch)


def test_bf16_autocasts_forward_passes_and_keeps_float32_state(tmp_path):
    trainer, grads = on_policy_grads(tmp_path, bf16=True)
    assert trainer.dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(v.dtype == torch.float32 for v in grads.values())
    state = trainer.optimizer.state[next(iter(trainer.model.parameters()))]
    assert state["exp_avg"].dtype == torch.float32
    # bf16 keeps ~3 significant digits: close to the float32 gradient, and not equal to it
    _, reference = on_policy_grads(tmp_path, bf16=False)
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref = torch.cat([reference[k].flatten() for k in grads])
    relative = float((flat - ref).norm() / ref.norm())
    assert 0 < relative < 0.1


def test_bf16_run_samples_in_bf16_and_updates_float32_weights(tmp_path):
    def trainer_for(bf16: bool) -> Trainer:
        return Trainer(TrainConfig(output_dir=str(tmp_path / f"bf16-{bf16}"), bf16=bf16,
                                   max_steps=2, prompts_per_step=4, num_generations=4,
                                   eval_size=8, task_train_size=64, progress=False,
                                   plots=False, learning_rate=1e-3))

    trainer, start = trainer_for(True), trainer_for(False)
    dtypes = []
    count_calls(trainer.model.lm_head, dtypes)
    for step in (1, 2):
        assert torch.isfinite(torch.tensor(trainer.step(step)["loss"]))
    assert set(dtypes) == {torch.bfloat16}  # sampling and log-probs alike
    moved = max(float((p.detach() - p0.detach()).abs().max()) for p, p0 in
                zip(trainer.model.parameters(), start.model.parameters()))
    assert moved > 1e-4 and all(p.dtype == torch.float32 for p in trainer.model.parameters())

"""The update's loss on a fixed batch against its hand-worked value: every row of the batch
counts in the normaliser (a row whose reward is unknown too, as in TRL), revision rows take
HeRL's shaped loss, and the algorithm's variants plug in without touching the update."""

import pytest
import torch

from tests.helpers import distributed_update as du


def expected_loss(batch, advantages, mask, loss_type, gamma, max_len):
    """At ratio 1 (one update per batch) a token's loss is -A, a revision token's -A/(1+gamma);
    with the reference equal to the policy the KL term is 0."""
    weight = torch.where(batch.rows["revision"], 1 / (1 + gamma), 1.0).unsqueeze(-1)
    per_token = -advantages * weight * mask
    rows = len(batch)  # every row, the masked one included
    if loss_type == "grpo":
        return float((per_token.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / rows)
    return float(per_token.sum() / (rows * max_len))


@pytest.mark.parametrize("case", ["grpo", "dr_grpo"])
def test_masked_rows_count_in_the_normaliser(tmp_path, case):
    trainer = du.trainer_for(case, str(tmp_path / "run"))
    batch, advantages, mask = du.fixed_batch(trainer)
    assert mask[7].sum() == 0 and advantages[7].abs().sum() == 0  # the unknown reward
    _, metrics = du.update(trainer, batch, advantages, mask)
    want = expected_loss(batch, advantages, mask, case, du.GAMMA[case],
                         trainer.cfg.max_completion_length)
    assert metrics["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    # rows with a trained token would give a different value: the test can tell them apart
    assert want * len(batch) / int((mask.sum(-1) > 0).sum()) != pytest.approx(want, rel=1e-3)


def grads_of(trainer) -> dict[str, torch.Tensor]:
    tensors, metrics = du.update(trainer, *du.fixed_batch(trainer))
    return {k: v for k, v in tensors.items() if k.startswith("grad.")}, metrics


@pytest.mark.parametrize("variant,plain", [
    # GSPO's sequence ratio is 1 on policy: its loss and gradient are GRPO's (loss_type grpo)
    (dict(importance_sampling_level="sequence", loss_type="grpo"), dict(loss_type="grpo")),
    # CISPO's -sg(rho) A log pi has DAPO's gradient at rho = 1 (both are token means)
    (dict(loss_type="cispo", epsilon_high=5.0), dict(loss_type="dapo")),
])
def test_gspo_and_cispo_on_policy(tmp_path, variant, plain):
    grads, metrics = grads_of(du.trainer_for("grpo", str(tmp_path / "a"), **plain))
    vgrads, vmetrics = grads_of(du.trainer_for("grpo", str(tmp_path / "b"), **variant))
    for name, g in grads.items():
        torch.testing.assert_close(vgrads[name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()))
    if variant["loss_type"] == "grpo":
        assert vmetrics["loss"] == pytest.approx(metrics["loss"], rel=1e-6)
    assert vmetrics["clip_fraction"] == 0  # on policy nothing is clipped or capped


def test_gspo_and_cispo_train_several_epochs(tmp_path):
    """Off policy (two iterations over a batch) the variants differ from the token-level clip."""
    losses = {}
    for name, overrides in {"token": {}, "gspo": dict(importance_sampling_level="sequence"),
                            "cispo": dict(loss_type="cispo", epsilon_high=1.05)}.items():
        trainer = du.trainer_for("grpo", str(tmp_path / name), num_iterations=2, **overrides)
        _, metrics = grads_of(trainer)
        losses[name] = metrics["loss"]
    assert len({round(v, 6) for v in losses.values()}) == 3, losses


def test_update_metrics_combine_every_optimizer_step():
    """Token quantities over every step's tokens, losses and norms averaged over the steps,
    skipped steps counted, an algorithm's own numbers averaged."""
    from explorl.algorithms.update import update_metrics

    first = {"loss": 0.5, "kl": 2.0, "entropy": 30.0, "entropy_t1": 30.0, "tempered_tokens": 0.0,
             "clip_fraction": 0.0, "grad_norm": 1.0, "update_skipped": 0, "tokens": 10,
             "generated": 12, "loss/policy": 0.5}
    second = {**first, "loss": 0.25, "kl": 4.0, "entropy": 18.0, "clip_fraction": 5.0,
              "grad_norm": 3.0, "update_skipped": 1, "tokens": 30, "generated": 36,
              "loss/policy": 0.25}
    out = update_metrics([(first, {"ppo/value_loss": 1.0}), (second, {"ppo/value_loss": 2.0})])
    assert out["clip_fraction"] == pytest.approx(5 / 40)  # not the last step's 5 / 30
    assert out["kl"] == pytest.approx(6 / 40) and out["entropy"] == pytest.approx(48 / 48)
    assert out["loss"] == pytest.approx(0.375) and out["loss/policy"] == pytest.approx(0.375)
    assert out["grad_norm"] == pytest.approx(2.0) and out["update_skipped"] == 1
    assert out["ppo/value_loss"] == pytest.approx(1.5)
    assert "entropy_t1" not in out  # every row at T = 1: the untempered entropy is the entropy


def test_metrics_of_two_mini_batches_are_those_of_both(tmp_path):
    """PPO's two mini-batches clip different shares of their tokens; the logged clip fraction
    is the share over both (the last mini-batch's alone was logged before)."""
    from explorl import TrainConfig, Trainer
    from explorl.algorithms.update import update_metrics
    from explorl.config import PPOConfig

    small = {**du.SMALL, "learning_rate": 0.05}
    trainer = Trainer(TrainConfig(output_dir=str(tmp_path / "run"), method="ppo",
                                  prompts_per_step=len(du.COUNTS), **small,
                                  ppo=PPOConfig(num_mini_batches=2, num_ppo_epochs=1,
                                                cliprange=0.05)))
    steps = []
    step = trainer.update._optimizer_step

    def spy(batch, coefficients):
        sums = step(batch, coefficients)
        steps.append(sums)
        return sums

    trainer.update._optimizer_step = spy
    batch, _, mask = du.fixed_batch(trainer)
    estimate = trainer.algorithm.advantages(batch, mask, trainer.logprobs)
    shard = trainer.update.prepare(batch, estimate, mask)
    metrics = trainer.update.step(shard, trainer.cfg.learning_rate)
    assert len(steps) == 2
    fractions = [s["clip_fraction"] / s["tokens"] for s in steps]
    assert fractions[0] == 0 and fractions[1] > 0  # the second follows a large first step
    want = sum(s["clip_fraction"] for s in steps) / sum(s["tokens"] for s in steps)
    assert metrics["clip_fraction"] == pytest.approx(want)
    assert metrics["clip_fraction"] != pytest.approx(fractions[1])
    assert metrics == update_metrics([(s, {}) for s in steps]) | {
        k: v for k, v in metrics.items() if k.startswith("ppo/")}

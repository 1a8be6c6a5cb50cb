"""The engine/trainer mismatch correction: hand-worked weights and KL, an unbiased estimate
from a mismatched sampler, the update's policy tokens weighted, a mismatched engine measured,
and the options refused where they cannot apply."""

import json
import math

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.algorithms.losses import mismatch_kl, mismatch_weights
from explorl.errors import UserError
from explorl.rollout.fast import FastEngine
from tests.helpers import distributed_update as du

TRAINER = torch.tensor([[-1.0, -2.0, -0.5]])
ENGINE = torch.tensor([[-1.5, -1.0, -0.5]])
MASK = torch.tensor([[1, 1, 0]])
E = math.exp


@pytest.mark.parametrize("mode,cap,weights,capped", [
    # per token: ratios e^0.5 = 1.649 and e^-1 = 0.368; the padded position weighs e^0 = 1
    ("token_truncate", 1.5, [1.5, E(-1), 1.0], [True, False, False]),
    ("token_mask", 1.5, [0.0, E(-1), 1.0], [True, False, False]),
    ("token_truncate", 3.0, [E(0.5), E(-1), 1.0], [False, False, False]),
    # per completion: the product of its tokens' ratios, e^(0.5 - 1) = 0.607, at every position
    ("sequence_truncate", 0.5, [0.5] * 3, [True, True, False]),
    ("sequence_mask", 0.5, [0.0] * 3, [True, True, False]),
    ("sequence_mask", 3.0, [E(-0.5)] * 3, [False, False, False]),
])
def test_weights_hand_worked(mode, cap, weights, capped):
    w, hit = mismatch_weights(TRAINER, ENGINE, MASK, mode, cap)
    torch.testing.assert_close(w, torch.tensor([weights]), rtol=1e-6, atol=0)
    assert hit.tolist() == [capped]


def test_unknown_engine_log_probs_weigh_one():
    engine = torch.cat([ENGINE, torch.full((1, 3), math.nan)])
    w, hit = mismatch_weights(TRAINER.repeat(2, 1), engine, MASK.repeat(2, 1), "token_mask", 1.5)
    assert w[1].tolist() == [1.0, 1.0, 1.0] and not hit[1].any()
    assert w[0, 0] == 0  # the known row is still masked


def test_mismatch_kl_hand_worked():
    kl = mismatch_kl(TRAINER, ENGINE)  # r - 1 - log r with log r = 0.5, -1, 0
    torch.testing.assert_close(kl, torch.tensor([[E(0.5) - 1.5, E(-1) - 1 + 1, 0.0]]),
                               rtol=1e-6, atol=1e-7)
    assert mismatch_kl(TRAINER, torch.full((1, 3), math.nan)).eq(0).all()


def test_weighted_samples_of_a_mismatched_sampler_estimate_the_trainers_expectation():
    """A sampler at temperature 1.5 against a trainer at 1: the weighted mean of f over the
    sampler's draws estimates E_trainer[f] (truncation at a cap above every ratio changes
    nothing); the plain mean estimates the sampler's, several standard errors away."""
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])
    trainer, engine = logits.log_softmax(-1), (logits / 1.5).log_softmax(-1)
    f = torch.arange(5.0)
    n = 200_000
    draws = torch.multinomial(engine.exp(), n, replacement=True, generator=g)
    w, _ = mismatch_weights(trainer[draws][None], engine[draws][None],
                            torch.ones(1, n), "token_truncate", cap=100.0)
    weighted, plain = (w[0] * f[draws]).mean(), f[draws].mean()
    truth = float((trainer.exp() * f).sum())
    se = float((w[0] * f[draws]).std()) / math.sqrt(n)  # the estimate's standard error
    assert abs(float(weighted) - truth) < 5 * se
    assert abs(float(plain) - truth) > 20 * se


def test_the_update_weights_the_policy_tokens(tmp_path):
    """One update (ratio 1) with engine log-probs off the trainer's by known amounts: the loss
    is the hand-worked one with each policy row's advantages times its tokens' ratios; the
    revision rows (HeRL's own term) are not weighted."""
    trainer = du.trainer_for("dr_grpo", str(tmp_path / "run"), beta=0.0,
                             vllm_importance_sampling_mode="token_truncate",
                             vllm_importance_sampling_cap=100.0)
    batch, advantages, mask = du.fixed_batch(trainer)
    delta = torch.rand(advantages.shape, generator=torch.Generator().manual_seed(1)) - 0.5
    batch.rollout.sampling_logps = trainer.logprobs.policy(batch.rollout) - delta
    _, metrics = du.update(trainer, batch, advantages, mask)
    policy = ~batch.rows["revision"].unsqueeze(-1)
    weighted = torch.where(policy, advantages * delta.exp(), advantages)
    want = du_expected(batch, weighted, mask, trainer)
    assert metrics["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert metrics["loss"] != pytest.approx(du_expected(batch, advantages, mask, trainer),
                                            rel=1e-3)
    trained = (mask.bool() & policy)
    kl = (delta.exp() - 1 - delta)[trained].mean()
    assert metrics["mismatch/kl"] == pytest.approx(float(kl), rel=1e-4)
    assert metrics["mismatch/capped"] == 0


def du_expected(batch, advantages, mask, trainer) -> float:
    from tests.test_update import expected_loss

    return expected_loss(batch, advantages, mask, "dr_grpo", du.GAMMA["dr_grpo"],
                         trainer.cfg.max_completion_length)


class HotterEngine(FastEngine):
    """Samples at 1.5 times the asked temperature and says it sampled at the asked one: its
    log-probs are those it really sampled from."""

    def generate(self, prompts, num_samples, temperatures, max_new_tokens):
        rollout = super().generate(prompts, num_samples, [1.5 * t for t in temperatures],
                                   max_new_tokens)
        rollout.temperatures = rollout.temperatures / 1.5
        return rollout


FAST = dict(eval_size=8, task_train_size=64, progress=False, plots=False, max_steps=2,
            prompts_per_step=8, num_generations=4, save_every=0)


def run_metrics(out, engine=None, **overrides) -> list[dict]:
    cfg = TrainConfig(output_dir=str(out), **FAST, **overrides)
    Trainer(cfg, engine=engine).train()
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_mismatched_engine_is_measured_and_masked(tmp_path):
    matched = run_metrics(tmp_path / "matched")
    hotter = run_metrics(tmp_path / "hotter", engine=HotterEngine,
                         vllm_importance_sampling_mode="token_mask",
                         vllm_importance_sampling_cap=1.2)
    for row in matched:  # float32 on both sides: the same numbers up to summation order
        assert row["mismatch/kl"] < 1e-8 and row["mismatch/capped"] == 0
    for row in hotter:
        assert row["mismatch/kl"] > 1e-3 and row["mismatch/capped"] > 0.01


def test_an_engine_without_sampling_log_probs_is_refused(tmp_path):
    class Blind(FastEngine):
        gives_sampling_logps = False

    with pytest.raises(UserError, match="^vllm_importance_sampling_correction:"):
        Trainer(TrainConfig(output_dir=str(tmp_path / "r"), **FAST), engine=Blind)
    assert not (tmp_path / "r").exists()
    Trainer(TrainConfig(output_dir=str(tmp_path / "r"), **FAST,
                        vllm_importance_sampling_correction=False), engine=Blind)


def test_uncorrected_runs_report_no_mismatch(tmp_path):
    rows = run_metrics(tmp_path / "off", vllm_importance_sampling_correction=False)
    assert not any(k.startswith("mismatch/") for k in rows[0])


"""Reward models from preference pairs: the Bradley-Terry loss by hand, TRL's pair layouts,
pairs from samples, a model that learns and resumes exactly, and a reward model as a reward."""

import json
import math

import pytest
import torch

from explorl import TrainConfig, Trainer
from explorl.cli import main
from explorl.config import PPOConfig, RMConfig
from explorl.data.preferences import load_pairs, pair_text, pairs_from_samples
from explorl.errors import UserError
from explorl.rm import RewardModelTrainer, bradley_terry_loss


def test_bradley_terry_loss_hand_worked():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    margin = torch.tensor([0.0, 0.5])
    # differences 1 and -1.5: log(1 + e^-1) = 0.313262, log(1 + e^1.5) = 1.701413
    assert bradley_terry_loss(chosen, rejected, margin).item() == pytest.approx(
        (0.313262 + 1.701413) / 2, abs=1e-5)
    # centring: 0.01 * mean((2 + 1)^2, (0 + 1)^2) = 0.05
    assert bradley_terry_loss(chosen, rejected, margin, 0.01).item() == pytest.approx(
        (0.313262 + 1.701413) / 2 + 0.05, abs=1e-5)


def test_pair_layouts(tmp_path):
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3", "margin": 1},
            {"chosen": "1+1=2", "rejected": "1+1=3"},
            {"prompt": [{"role": "user", "content": "hi"}],
             "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "go away"}]}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(str(path))
    assert [p["margin"] for p in pairs] == [1.0, 0.0, 0.0] and pairs[1]["prompt"] is None
    from explorl.models.policy import load_tokenizer

    tok = load_tokenizer("tiny")  # no chat template: messages joined by lines
    assert pair_text(tok, pairs[0]["prompt"], pairs[0]["chosen"]) == "1+1=2"
    assert pair_text(tok, pairs[1]["prompt"], pairs[1]["rejected"]) == "1+1=3"
    assert pair_text(tok, pairs[2]["prompt"], pairs[2]["chosen"]) == "hi\nhello"


@pytest.mark.parametrize("row,message", [
    ({"prompt": "a", "chosen": "b"}, "p.jsonl:1: missing 'rejected' column"),
    ({"prompt": "a", "chosen": "  ", "rejected": "c"}, "p.jsonl:1: chosen: empty completion"),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "p.jsonl:1: rejected: identical to chosen"),
    ({"prompt": "a", "chosen": "b", "rejected": "c", "margin": "x"}, "p.jsonl:1: margin:"),
    ({"prompt": [{"role": "user", "content": "a"}], "chosen": "b", "rejected": "c"},
     "p.jsonl:1: prompt: a message list needs message-list answers"),
])
def test_bad_pairs_are_named(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=message):
        load_pairs(str(path))


def test_pairs_from_samples():
    samples = [{"prompt": "p", "completion": c, "reward": r}
               for c, r in [("1", 1.0), ("1", 1.0), ("2", 0.0), ("3", 0.0), ("", 0.0),
                            ("4", math.nan)]]
    samples += [{"prompt": "q", "completion": "9", "reward": 1.0}]  # nothing to pair with
    pairs = pairs_from_samples(samples, threshold=1.0, per_prompt=4, seed=0)
    # one distinct correct answer: one pair; empty and unknown answers never enter
    assert len(pairs) == 1 and pairs[0]["chosen"] == "1" and pairs[0]["rejected"] in ("2", "3")


def easy_pairs(path, n):
    """Chosen answers start with 1, rejected ones with 2: a pattern a tiny model can learn."""
    rows = [{"prompt": f"{i}+{i % 7}=", "chosen": f"1{i % 10}", "rejected": f"2{i % 10}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_reward_model_learns_resumes_exactly_and_scores_completions(tmp_path):
    data = easy_pairs(tmp_path / "p.jsonl", 240)
    common = dict(dataset=str(data), learning_rate=1e-3, batch_size=16, save_every=4,
                  eval_every=0, progress=False, plots=False)
    straight = RewardModelTrainer(RMConfig(output_dir=str(tmp_path / "a"), max_steps=8,
                                           **common))
    summary = straight.train()
    losses = [json.loads(x)["loss"] for x in (tmp_path / "a/metrics.jsonl").read_text()
              .splitlines()]
    assert summary["after"]["accuracy"] >= 0.9 and summary["after"]["margin"] > 0
    assert losses[-1] < losses[0] < math.log(2) + 0.1  # from chance to fitted
    RewardModelTrainer(RMConfig(output_dir=str(tmp_path / "b"), max_steps=4, **common)).train()
    RewardModelTrainer(RMConfig(output_dir=str(tmp_path / "b"), max_steps=8, **common)).train()
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in "ab")
    assert a["after"] == b["after"]
    rows = [(tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in "ab"]
    assert [json.loads(x)["loss"] for x in rows[0]] == [json.loads(x)["loss"] for x in rows[1]]

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "final")
    assert model.config.num_labels == 1
    from explorl.rewards.base import resolve

    name, reward = resolve(str(tmp_path / "a"))  # a run directory: its final/ model
    assert name == "reward_model"
    scores = reward(["3+3=", "3+3="], ["13", "23"])
    assert scores[0] > scores[1]

    # PPO against it, the critic started from it: its first values are the RM's, not zeros
    run = TrainConfig(output_dir=str(tmp_path / "ppo"), method="ppo", max_steps=1,
                      reward_funcs=[str(tmp_path / "a")], prompts_per_step=4, num_generations=2,
                      ppo=PPOConfig(critic_init="reward_model"), eval_size=8,
                      task_train_size=32, progress=False, plots=False)
    trainer = Trainer(run)
    trainer.train()
    first = json.loads((tmp_path / "ppo/metrics.jsonl").read_text().splitlines()[0])
    assert first["ppo/values"] != 0 and "reward/reward_model/mean" in first
    head = trainer.algorithm.critic.head.weight
    assert not torch.equal(head, torch.zeros_like(head))


def test_sample_then_pairs_from_the_command_line(tmp_path, capsys):
    samples, pairs = tmp_path / "s.jsonl", tmp_path / "p.jsonl"
    assert main(["sample", "tiny", "--n", "4", "--size", "30", "--out", str(samples)]) == 0
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == 120 and {"prompt", "completion", "reward", "truncated",
                                 "answer"} <= set(rows[0])
    assert all(isinstance(r["truncated"], bool) for r in rows)
    assert all(r["reward"] == float(r["completion"].strip() == r["answer"]) for r in rows)
    assert main(["pairs", str(samples), "--out", str(pairs)]) == 0
    made = load_pairs(str(pairs))
    assert made and all(p["chosen"] != p["rejected"] for p in made)
    by_prompt = {(r["prompt"], r["completion"]): r["reward"] for r in rows}
    assert all(by_prompt[(p["prompt"], p["chosen"])] == 1.0
               and by_prompt[(p["prompt"], p["rejected"])] == 0.0 for p in made)

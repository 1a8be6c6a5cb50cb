"""ILQL's math against hand-worked numbers, its decoding shift in every engine, and offline
training end to end (ILQL and filtered behaviour cloning): learning, exact resume, saving."""

import json
import math

import pytest
import torch

from explorl.algorithms.ilql import (
    ILQLHeads,
    attach_saved_heads,
    awac_weights,
    bellman_targets,
    cql_loss,
    expectile_loss,
    polyak_update,
    shifted_logits,
    value_shift,
)
from explorl.algorithms.losses import terminal_rewards

EPS = 1e-6  # float32 arithmetic on numbers of order 1


# --- the math --------------------------------------------------------------------------------
def test_bellman_targets_on_a_three_token_completion():
    # reward 1 on the last token; V(s_0..s_2) = 0.5, 0.8, 0.9; gamma 0.9:
    # t=0: 0 + 0.9 * 0.8 = 0.72; t=1: 0 + 0.9 * 0.9 = 0.81; t=2: 1 + 0.9 * 0 (terminal) = 1
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = terminal_rewards(torch.tensor([1.0, 0.5]), mask)
    assert rewards.tolist() == [[0, 0, 1], [0, 0.5, 0]]
    values = torch.tensor([[0.5, 0.8, 0.9], [0.2, 0.4, 7.0]])  # 7.0: past row 2's end
    targets = bellman_targets(rewards, values, mask, gamma=0.9)
    # row 2 ends at t=1: t=0 -> 0.9 * 0.4 = 0.36; t=1 -> 0.5 + 0.9 * 0 = 0.5 (7.0 never seen)
    assert torch.allclose(targets[0], torch.tensor([0.72, 0.81, 1.0]), atol=EPS)
    assert torch.allclose(targets[1, :2], torch.tensor([0.36, 0.5]), atol=EPS)


def test_expectile_loss_at_tau_0_7():
    # u = 2 (target above V): 0.7 * 4 = 2.8; u = -1: 0.3 * 1 = 0.3; u = 0: 0
    loss = expectile_loss(torch.tensor([2.0, -1.0, 0.0]), tau=0.7)
    assert torch.allclose(loss, torch.tensor([2.8, 0.3, 0.0]), atol=EPS)


def test_cql_term_on_a_three_token_vocabulary():
    q = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
    actions = torch.tensor([[2, 0]])
    # logsumexp(1, 2, 3) = 3 + log(1 + e^-1 + e^-2) = 3.4076059; minus Q(a): 3 and 1
    lse = 3 + math.log(1 + math.exp(-1) + math.exp(-2))
    assert torch.allclose(cql_loss(q, actions), torch.tensor([[lse - 3, lse - 1]]), atol=EPS)


def test_polyak_update():
    target, online = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[0.0, 0.0]]))
        online.weight.copy_(torch.tensor([[1.0, -2.0]]))
    polyak_update(target, online, alpha=0.25)
    assert torch.allclose(target.weight, torch.tensor([[0.25, -0.5]]), atol=EPS)
    polyak_update(target, online, alpha=0.25)  # 0.25 * online + 0.75 * previous
    assert torch.allclose(target.weight, torch.tensor([[0.4375, -0.875]]), atol=EPS)


def test_decoding_shift_and_awac_weights():
    # logits (1, 0, -1) + 2 * ((0.5, 1, 0) - 0.25) = (1.5, 1.5, -1.5)
    shifted = shifted_logits(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.5, 1.0, 0.0]),
                             torch.tensor(0.25), beta=2.0)
    assert torch.allclose(shifted, torch.tensor([1.5, 1.5, -1.5]), atol=EPS)
    # exp(1 * A), capped at 100
    weights = awac_weights(torch.tensor([0.0, 1.0, 10.0]), awac_beta=1.0)
    assert torch.allclose(weights, torch.tensor([1.0, math.e, 100.0]), atol=1e-5)


# --- decoding with the heads -----------------------------------------------------------------
def rigged_heads(model, token: int) -> ILQLHeads:
    """Heads whose target Q is 1 for ``token`` and 0 elsewhere in every state; V = 0."""
    heads = ILQLHeads(model.config.hidden_size, model.config.vocab_size)
    with torch.no_grad():
        for head in [*heads.target_q, heads.v]:
            head[2].weight.zero_()
            head[2].bias.zero_()
        for head in heads.target_q:
            head[2].bias[token] = 1.0
    return heads


def test_every_engine_decodes_with_the_shift_and_beta_zero_is_the_model():
    from explorl.models.policy import load_model, load_tokenizer
    from explorl.rollout.engine import HFEngine

    model, tok = load_model("tiny"), load_tokenizer("tiny")
    engine = HFEngine(model, tok)
    prompts = [tok("12+7=", add_special_tokens=False).input_ids]
    plain = engine.greedy(prompts, 4)
    seven = tok("7", add_special_tokens=False).input_ids[0]
    with value_shift(model, rigged_heads(model, seven), beta=0.0):
        assert engine.greedy(prompts, 4) == plain
    with value_shift(model, rigged_heads(model, seven), beta=1000.0):
        assert engine.greedy(prompts, 4) == [[seven] * 4]
        sampled = engine.generate(prompts, [3], [1.0], 4)
        assert sampled.completion_ids.tolist() == [[seven] * 4] * 3
    assert engine.greedy(prompts, 4) == plain  # the hook is gone after the block


# --- offline training end to end -------------------------------------------------------------
@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Scored samples of the shipped model on arithmetic training prompts."""
    from explorl.cli import main

    path = tmp_path_factory.mktemp("samples") / "s.jsonl"
    assert main(["sample", "tiny", "--n", "8", "--size", "48", "--out", str(path)]) == 0
    return path


def offline(out, samples, method="ilql", **kw):
    from explorl.config import config_from_dict
    from explorl.offline import OfflineTrainer

    raw = {"method": method, "dataset": str(samples), "output_dir": str(out),
           "train_batch_size": 32, "progress": False, "plots": False, "eval_every": 0,
           "save_every": 0, "learning_rate": 3e-4, "seed": 1, **kw}
    return OfflineTrainer(config_from_dict(raw))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ilql_learns_values_that_separate_success_from_failure(tmp_path, samples):
    trainer = offline(tmp_path / "run", samples, max_steps=60, eval_dataset="arithmetic",
                      eval_size=20)
    summary = trainer.train()
    assert summary["before"]["n"] == summary["after"]["n"] == 20
    rows = metrics(tmp_path / "run")
    first = sum(r["ilql/loss_q"] for r in rows[:5]) / 5
    last = sum(r["ilql/loss_q"] for r in rows[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    # Q of the taken tokens, on the whole data: successful samples' tokens above failed ones'
    batch = trainer.batch(list(range(len(trainer.samples))))
    from explorl.algorithms.ilql import hidden_and_logits

    with torch.no_grad():
        hidden, _ = hidden_and_logits(trainer.model, batch)
        q = trainer.algorithm.heads.q[0](hidden).gather(
            -1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    last_token = batch.completion_mask.sum(-1) - 1
    q_end = q[torch.arange(len(q)), last_token]
    ok = batch.rewards >= 1
    assert q_end[ok].mean() > q_end[~ok].mean() + 0.3
    final = tmp_path / "run" / "final"
    meta = json.loads((final / "ilql.json").read_text())
    assert meta["beta"] == 4.0 and (final / "ilql_heads.safetensors").exists()
    assert summary["steps"] == 60 and summary["train_samples"] == 384


def test_ilql_decodes_better_than_the_data_it_learned_from(tmp_path):
    """Every prompt has the rewarded answer "1" once and the unrewarded "2" three times: the
    behaviour-cloned model (beta 0) mostly answers "2"; the value shift (beta 4) answers "1"."""
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(100):
        prompt = f"{rng.randint(100, 999)}?"
        rows += [{"prompt": prompt, "completion": "1", "reward": 1.0}] + \
            [{"prompt": prompt, "completion": "2", "reward": 0.0}] * 3
    data = tmp_path / "bandit.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = offline(tmp_path / "run", data, max_steps=150, **{"ilql.alpha": 0.05})
    trainer.train()
    tok = trainer.tokenizer
    prompts = [tok(f"{rng.randint(100, 999)}?", add_special_tokens=False).input_ids
               for _ in range(20)]
    one, two = (tok(d, add_special_tokens=False).input_ids[0] for d in "12")
    first = {}
    for beta in (0.0, 4.0):
        with value_shift(trainer.model, trainer.algorithm.heads, beta):
            first[beta] = [ids[0] for ids in trainer.engine.greedy(prompts, 1)]
    counts = {beta: (ids.count(one), ids.count(two)) for beta, ids in first.items()}
    assert counts[0.0][1] >= 15 and counts[4.0][0] >= 18, counts


def test_states_line_up_with_the_tokens_they_predict(tmp_path, samples):
    """The hidden states the heads read are the LM head's input at the states before each
    completion token: through the LM head they give the policy's log-probs of the tokens."""
    from explorl.algorithms.ilql import hidden_and_logits
    from explorl.models.policy import completion_logprobs

    trainer = offline(tmp_path / "run", samples, max_steps=1)
    batch = trainer.batch([0, 9, 17, 30])  # rows of different prompt and completion lengths
    with torch.no_grad():
        hidden, logits = hidden_and_logits(trainer.model, batch)
        head = trainer.model.get_output_embeddings()
        assert torch.allclose(head(hidden).float(), logits, atol=1e-5)
        taken = torch.log_softmax(logits, -1).gather(
            -1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
        logps = completion_logprobs(trainer.model, batch.prompt_ids, batch.prompt_mask,
                                    batch.completion_ids, batch.completion_mask,
                                    torch.ones(4), with_entropy=False).logps
    mask = batch.completion_mask.bool()
    assert torch.allclose(taken[mask], logps[mask], atol=1e-5)


def test_micro_batches_give_the_whole_batch_loss(tmp_path, samples):
    whole = offline(tmp_path / "a", samples, max_steps=1).step(1)
    chunked = offline(tmp_path / "b", samples, max_steps=1, micro_batch_size=5).step(1)
    for key in ("loss", "ilql/loss_q", "ilql/loss_cql", "ilql/loss_awac", "grad_norm"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5), key


def test_truncated_samples_get_no_eos(tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2", "reward": 1.0},
            {"prompt": "1+1=", "completion": "22", "reward": 0.0, "truncated": True}]
    data = tmp_path / "s.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = offline(tmp_path / "run", data, max_steps=1)
    eos = trainer.tokenizer.eos_token_id
    (_, ended, _), (_, cut, _) = trainer.samples
    assert ended[-1] == eos and len(ended) == 2
    assert eos not in cut and len(cut) == 2


def test_saved_heads_load_beside_a_transformers_backbone(tmp_path, samples):
    from transformers import AutoModelForCausalLM

    offline(tmp_path / "run", samples, max_steps=2).train()
    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[5, 6, 7]])
    plain = model(ids).logits
    assert attach_saved_heads(model, final, beta=0.0) == 0.0
    assert torch.equal(model(ids).logits, plain)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert attach_saved_heads(model, final) == 4.0
    assert not torch.allclose(model(ids).logits, plain)


def test_ilql_resumes_exactly(tmp_path, samples):
    straight = tmp_path / "straight"
    offline(straight, samples, max_steps=4).train()
    resumed = tmp_path / "resumed"
    offline(resumed, samples, max_steps=2, save_every=2).train()
    offline(resumed, samples, max_steps=4, save_every=2).train()
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(straight)]
    from safetensors.torch import load_file

    for name in ("model.safetensors", "ilql_heads.safetensors"):
        a, b = (load_file(str(p / "final" / name)) for p in (straight, resumed))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_stops_offline_training_with_a_checkpoint_to_resume(tmp_path, samples):
    import signal

    from explorl.errors import Interrupted

    straight = tmp_path / "straight"
    offline(straight, samples, max_steps=4).train()
    run = tmp_path / "run"
    trainer = offline(run, samples, max_steps=4)
    step = trainer.step

    def step_then_signal(n):  # SIGTERM arrives during step 2
        if n == 2:
            trainer.interrupts.received = signal.SIGTERM
        return step(n)

    trainer.step = step_then_signal
    with pytest.raises(Interrupted, match="SIGTERM: saved step 2"):
        trainer.train()
    assert (run / "checkpoint-2").is_dir()
    offline(run, samples, max_steps=4).train()
    assert [r["loss"] for r in metrics(run)] == [r["loss"] for r in metrics(straight)]


def test_filtered_bc_trains_only_on_successes(tmp_path, samples):
    trainer = offline(tmp_path / "bc", samples, method="filtered_bc", max_steps=30)
    assert trainer.samples and all(r == 1.0 for _, _, r in trainer.samples)
    trainer.train()
    rows = metrics(tmp_path / "bc")
    assert sum(r["bc/nll"] for r in rows[-5:]) < sum(r["bc/nll"] for r in rows[:5])
    assert not (tmp_path / "bc" / "final" / "ilql.json").exists()


def test_eval_cli_decodes_an_ilql_run_with_its_heads(tmp_path, samples, capsys):
    from explorl.cli import main

    offline(tmp_path / "run", samples, max_steps=2).train()
    results = {}
    for beta in ("0", "100"):
        capsys.readouterr()
        assert main(["eval", str(tmp_path / "run"), "--size", "40", "--pass-k", "",
                     "--ilql-beta", beta, "--json"]) == 0
        results[beta] = json.loads(capsys.readouterr().out)["accuracy"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run" / "final"), "--size", "40", "--pass-k", "",
                 "--json"]) == 0  # the saved beta (4)
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
    # two steps leave the heads close to their random start: beta 100 scrambles the answers
    assert results["100"] < results["0"]
    # beta 0 decodes the backbone alone: the same as the backbone without the heads files
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in (tmp_path / "run" / "final").iterdir():
        if not p.name.startswith("ilql"):
            (bare / p.name).write_bytes(p.read_bytes())
    assert main(["eval", str(bare), "--size", "40", "--pass-k", "", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == results["0"]

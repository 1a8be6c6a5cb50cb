"""Supervised warm start: builds the shipped tiny model from the built-in tasks' data.

``explorl sft`` trains a fresh tiny Qwen2 with cross-entropy on the answer tokens of arithmetic
demonstrations drawn fresh each step (never a held-out prompt), then saves it with
``save_pretrained``. A share ``bug_rate`` of the demonstrations follow the classic buggy column
procedures (:func:`explorl.data.arithmetic.buggy_answer`), the way a base model picks up habits
of uneven quality; the result is right only part of the time, which is where RL can help. The
shipped weights are ``explorl sft output_dir=src/explorl/assets/tiny`` (deterministic on CPU).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from explorl.data import arithmetic, calculator, rubric_task
from explorl.errors import UserError
from explorl.evaluation import evaluate_rows
from explorl.models.tiny import char_tokenizer, tiny_config
from explorl.rewards.rubric import RubricReward


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    seed: int = 0
    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    hidden_size: int = 128
    num_layers: int = 3
    eval_size: int = 1000
    bug_rate: float = 0.8
    """Share of addition demonstrations whose answer drops the carries (where that differs)."""
    threads: int = 1
    """CPU threads. The float summation order depends on it; 1 gives the same weights on any
    machine (the shipped model was built with 1)."""
    rubric_steps: int = 2000
    """Second phase: steps on the rubric task (direct answers and revisions), with every
    ``replay_every``-th batch arithmetic so that the first phase is not forgotten."""
    rubric_learning_rate: float = 2e-3
    revise_share: float = 0.5
    """Share of rubric demonstrations that are revisions of a failed draft."""
    replay_every: int = 4
    init_from: str | None = None
    """Skip the arithmetic phase and continue from this model folder (e.g. the output of a run
    with ``rubric_steps=0``)."""
    tool_steps: int = 0
    """A phase on the calculator task (:func:`explorl.data.calculator.sft_example`): a share
    ``tool_share`` of demonstrations call the tool in the tagged format, the others answer at
    once (buggy at ``bug_rate``), the tool's answers not trained; every ``replay_every``-th batch
    plain arithmetic. ``model=tiny-tools`` is ``explorl sft init_from=<tiny> rubric_steps=0
    tool_steps=1500``."""
    tool_share: float = 0.5
    rare_steps: int = 0
    """Third phase: steps on the rare rubric variant (:func:`explorl.data.rubric_task.
    rare_sft_example`); every ``replay_every``-th batch is a replay, arithmetic and the first
    rubric variants in turn. ``model=tiny-rare`` is ``explorl sft init_from=<tiny>
    rubric_steps=0 rare_steps=1500``."""


def _batch(tok, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + answer + EOS`` with labels only on the answer and EOS (on the
    trained ``turns`` and EOS, for a row that has turns)."""
    seqs, labels = [], []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False).input_ids
        seq, lab = list(p), [-100] * len(p)
        for text, trained in r.get("turns", [(r.get("answer"), True)]):
            ids = tok(text, add_special_tokens=False).input_ids
            seq, lab = seq + ids, lab + (ids if trained else [-100] * len(ids))
        seqs.append(seq + [tok.eos_token_id])
        labels.append(lab + [tok.eos_token_id])
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, y) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(y)] = torch.tensor(y)
        mask[i, : len(s)] = 1
    return ids, mask, lab


def run_sft(cfg: SFTConfig, log=print) -> dict:
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.learning_rate <= 0 or cfg.rare_steps < 0:
        raise UserError("sft: steps, batch_size and learning_rate must be positive and "
                        "rare_steps >= 0")
    if not 0 <= cfg.bug_rate <= 1:
        raise UserError(f"sft: bug_rate must be in [0, 1], got {cfg.bug_rate}")
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _fit(cfg, log)
    finally:
        torch.set_num_threads(previous)  # leave the caller's threading as it was


def _fit(cfg: SFTConfig, log) -> dict:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = char_tokenizer()
    _, heldout = arithmetic.splits(1, cfg.eval_size)
    held = {r["prompt"] for r in heldout}
    start = time.time()
    if cfg.init_from:
        model = Qwen2ForCausalLM.from_pretrained(cfg.init_from, use_safetensors=True)
    else:
        model = Qwen2ForCausalLM(tiny_config(len(tok), cfg.hidden_size, cfg.num_layers))

        _train(model, tok, cfg.steps, cfg.learning_rate, cfg.warmup_steps,
               lambda: _arithmetic_demos(cfg, rng, held), log)
    rubric = _rubric_phase(cfg, model, tok, held, log) if cfg.rubric_steps else None
    rare = _rare_phase(cfg, model, tok, held, log) if cfg.rare_steps else None
    if cfg.tool_steps:
        _tool_phase(cfg, model, tok, held, log)
    result = evaluate_rows(model, tok, heldout, max_new_tokens=8, pass_k=(1, 8))
    if rubric is not None:
        result["rubric"] = rubric
    if rare is not None:
        result["rubric_rare"] = rare
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    result["sft_seconds"] = round(time.time() - start, 1)
    (out / "sft_eval.json").write_text(json.dumps(result, indent=2))
    return result


def _arithmetic_demos(cfg: SFTConfig, rng: random.Random, held: set[str]) -> list[dict]:
    demos = []
    for _ in range(cfg.batch_size):
        prompt, answer, _level = arithmetic.sample_problem(rng, held)
        if rng.random() < cfg.bug_rate:
            answer = arithmetic.buggy_answer(prompt)
        demos.append({"prompt": prompt, "answer": answer})
    return demos


def _train(model, tok, steps: int, lr: float, warmup: int, demos, log) -> None:
    """AdamW with linear warmup and cosine decay on fresh demonstrations each step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def lr_scale(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_scale)
    model.train()
    total = 0.0
    for step in range(steps):
        ids, mask, lab = _batch(tok, demos())
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        total += loss.item()
        if (step + 1) % 100 == 0:
            log(f"sft step {step + 1}/{steps} mean loss {total / 100:.4f}")
            total = 0.0


def _rubric_phase(cfg: SFTConfig, model, tok, held_arithmetic: set[str], log) -> dict:
    """Direct answers and revisions on the rubric task; batches of one kind each, so that
    short and long demonstrations are not padded together."""
    rng = random.Random(cfg.seed + 1)
    held = _held_rubric_prompts(cfg, ("hidden", "stated"))

    def fresh() -> list[dict]:
        share = 1.0 if rng.random() < cfg.revise_share else 0.0
        return [rubric_task.sft_example(rng, held, share) for _ in range(cfg.batch_size)]

    demos = _replayed(cfg, fresh, lambda step: _arithmetic_demos(cfg, rng, held_arithmetic))
    _train(model, tok, cfg.rubric_steps, cfg.rubric_learning_rate, cfg.warmup_steps, demos, log)
    return _probe(cfg, model, tok, "hidden")


def _rare_phase(cfg: SFTConfig, model, tok, held_arithmetic: set[str], log) -> dict:
    """The rare variant's direct answers and revisions, with the first rubric variants' and
    arithmetic batches replayed so that neither is forgotten."""
    rng = random.Random(cfg.seed + 2)
    held = _held_rubric_prompts(cfg, ("hidden", "stated", "rare"))

    def fresh() -> list[dict]:
        share = 1.0 if rng.random() < cfg.revise_share else 0.0
        return [rubric_task.rare_sft_example(rng, held, share) for _ in range(cfg.batch_size)]

    def replay(step: int) -> list[dict]:  # arithmetic and the first variants in turn
        return _arithmetic_demos(cfg, rng, held_arithmetic) if step % (
            2 * cfg.replay_every) else [rubric_task.sft_example(rng, held, cfg.revise_share)
                                        for _ in range(cfg.batch_size)]

    demos = _replayed(cfg, fresh, replay)
    _train(model, tok, cfg.rare_steps, cfg.rubric_learning_rate, cfg.warmup_steps, demos, log)
    return _probe(cfg, model, tok, "rare")


def _tool_phase(cfg: SFTConfig, model, tok, held_arithmetic: set[str], log) -> None:
    """Calls of the calculator and direct answers, arithmetic replayed."""
    rng = random.Random(cfg.seed + 3)
    demos = _replayed(cfg, lambda: [calculator.sft_example(rng, held_arithmetic, cfg.tool_share,
                                                           cfg.bug_rate)
                                    for _ in range(cfg.batch_size)],
                      lambda step: _arithmetic_demos(cfg, rng, held_arithmetic))
    _train(model, tok, cfg.tool_steps, cfg.rubric_learning_rate, cfg.warmup_steps, demos, log)


def _replayed(cfg: SFTConfig, fresh, replay):
    """The demonstrations of a phase, step by step: ``fresh()``, and every ``replay_every``-th
    step ``replay(step)`` instead, so that earlier phases are not forgotten."""
    step = 0

    def demos() -> list[dict]:
        nonlocal step
        step += 1
        if cfg.replay_every and step % cfg.replay_every == 0:
            return replay(step)
        return fresh()

    return demos


def _held_rubric_prompts(cfg: SFTConfig, variants: tuple[str, ...]) -> set[str]:
    return {r["prompt"] for v in variants for r in rubric_task.splits(0, cfg.eval_size, v)[1]}


def _probe(cfg: SFTConfig, model, tok, variant: str) -> dict:
    """Whether the model reads its hindsight on 400 held-out prompts of ``variant``."""
    from explorl.improve import hindsight_probe
    from explorl.rollout.engine import HFEngine

    rows = rubric_task.splits(0, min(cfg.eval_size, 400), variant)[1]
    return hindsight_probe(HFEngine(model, tok), tok, rows, RubricReward("strict"),
                           rubric_task.REVISE_TEMPLATE, max_new_tokens=12)

"""Do correct revisions, trained under the original prompt, teach the direct answer? A probe
apart from RL, on ``dataset=rubric_rare`` with ``model=tiny-rare``.

The frozen model revises one failed draft of each of ``--prompts`` training prompts (lists
shown, T = 1); the revisions that meet every criterion become ``(original prompt, revision)``
pairs. The model is then fine-tuned on them (Adam, lr 2e-4, batches of 32) with the negative
log-likelihood of (a) every completion token, or (b) only the last two digits and EOS, the
tokens that decide the hidden ending; the same number of steps each. Held-out greedy answers
(300 prompts) are graded every ``--every`` steps: strict success and the hidden ending alone.
If (a) learns the ending as fast as (b), copying the draft's digits does not swamp the two
tokens that matter.

    python benchmarks/revision_sft_probe.py --out benchmarks/results/revision_sft_probe.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from explorl.batch import Rollout
from explorl.data import rubric_task
from explorl.data.prompts import PromptCodec
from explorl.exploration.hindsight import criteria_of
from explorl.models.policy import completion_logprobs, load_model, load_tokenizer
from explorl.rewards.rubric import RubricReward
from explorl.rollout.engine import HFEngine, left_pad


def grade(tok, codec, texts, rows):
    prompts = [r["prompt"] for r in rows]
    return RubricReward("strict").grade(prompts, texts, rubric=[criteria_of(r) for r in rows])


def revision_pairs(model, tok, codec, rows) -> list[tuple[list[int], list[int]]]:
    """(original prompt ids, correct revision ids + EOS) from one failed draft per prompt."""
    engine = HFEngine(model, tok)
    prompts = [codec.encode(r["prompt"]) for r in rows]
    drafts = tok.batch_decode(engine.generate(prompts, [1] * len(rows), [1.0] * len(rows),
                                              12).completions(), skip_special_tokens=True)
    grades = grade(tok, codec, drafts, rows)
    failed = [i for i, g in enumerate(grades) if not g.strict]
    hindsight = [codec.encode(rubric_task.REVISE_TEMPLATE.format(
        instruction=rows[i]["prompt"], draft=drafts[i],
        met_list=", ".join(c.description for c, v in zip(criteria_of(rows[i]),
                                                          grades[i].verdicts) if v),
        unmet_list=", ".join(c.description for c, v in zip(criteria_of(rows[i]),
                                                            grades[i].verdicts) if not v)))
        for i in failed]
    revised = engine.generate(hindsight, [1] * len(failed), [1.0] * len(failed), 12)
    texts = tok.batch_decode(revised.completions(), skip_special_tokens=True)
    good = [k for k, g in enumerate(grade(tok, codec, texts, [rows[i] for i in failed]))
            if g.strict]
    return [(prompts[failed[k]], revised.completions()[k]) for k in good]


def held_out(model, tok, codec, rows) -> dict:
    ids = HFEngine(model, tok).greedy([codec.encode(r["prompt"]) for r in rows], 12)
    grades = grade(tok, codec, tok.batch_decode(ids, skip_special_tokens=True), rows)
    return {"success": sum(g.strict for g in grades) / len(rows),
            "hidden": sum(g.verdicts[-1] for g in grades) / len(rows)}


def train(pairs, tok, codec, rows, mode: str, steps: int, every: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    model = load_model("tiny-rare")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    rng = random.Random(seed)
    curve = [{"step": 0, **held_out(model, tok, codec, rows)}]
    for step in range(1, steps + 1):
        batch = rng.sample(pairs, min(32, len(pairs)))
        prompt_ids, prompt_mask = left_pad([p for p, _ in batch], tok.pad_token_id)
        width = max(len(c) for _, c in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, (_, c) in enumerate(batch):
            ids[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1
        trained = mask.clone()
        if mode == "ending":  # the last two digits and EOS
            lengths = mask.sum(-1)
            cols = torch.arange(width)
            trained = ((cols >= (lengths - 3).unsqueeze(-1)) & (mask == 1)).long()
        rollout = Rollout(prompt_ids, prompt_mask, ids, mask, torch.ones(len(batch)),
                          torch.arange(len(batch)), torch.zeros(len(batch), dtype=torch.bool))
        logps = completion_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, ids, mask,
                                    rollout.temperatures, with_entropy=False).logps
        loss = -(logps * trained).sum() / trained.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            model.eval()
            curve.append({"step": step, "nll": float(loss.detach()),
                          **held_out(model, tok, codec, rows)})
            model.train()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=3000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--out", type=Path, required=True)
    ns = p.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    tok = load_tokenizer("tiny-rare")
    codec = PromptCodec(tok)
    train_rows, held = rubric_task.splits(ns.prompts, 300, "rare")
    model = load_model("tiny-rare").eval()
    with torch.no_grad():
        pairs = revision_pairs(model, tok, codec, train_rows)
    result = {"pairs": len(pairs), "prompts": ns.prompts}
    for mode in ("all", "ending"):
        result[mode] = train(pairs, tok, codec, held, mode, ns.steps, ns.every, seed=0)
        print(mode, result[mode][-1], flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    ns.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Tables and figures for the ILQL evidence, from the folder ``benchmarks/ilql.sh`` wrote.

    python benchmarks/ilql_report.py runs/ilql docs/img/ilql

Per task (``arithmetic/``, ``rubric/``): held-out greedy accuracy of the shipped model,
filtered behaviour cloning, ILQL decoded at beta 0, 1 and 4, and GRPO, per seed and as
mean ± sample std, with what each cost in model calls (completions) and generated tokens; then
figures of ILQL's losses and of Q - V on the successful and the failed samples' tokens, mean
over the seeds against steps, and of accuracy against beta.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from explorl.tracking import moving_average, new_figure, read_metrics, save_figure, series

BETAS = (0, 1, 4)
LOSSES = ("ilql/loss_q", "ilql/loss_v", "ilql/loss_cql", "ilql/loss_awac")
ADVANTAGES = ("ilql/advantage_success", "ilql/advantage_failure")


def seeds(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("seed*") if (p / "summary.json").exists())


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def data_cost(samples: Path) -> tuple[int, int]:
    """Completions and their tokens (the tiny model's characters, EOS included)."""
    from explorl.models.policy import load_tokenizer

    tok = load_tokenizer("tiny")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    tokens = sum(len(tok(r["completion"], add_special_tokens=False).input_ids) + 1 for r in rows)
    return len(rows), tokens


def accuracies(task: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    runs = seeds(task / "ilql")
    out["shipped model"] = [summary(runs[0])["before"]["accuracy"]] if runs else []
    out["filtered BC"] = [summary(r)["after"]["accuracy"] for r in seeds(task / "filtered_bc")]
    for beta in BETAS:
        out[f"ILQL, beta {beta}"] = [
            json.loads((r / f"eval_beta{beta}.json").read_text())["accuracy"] for r in runs
            if (r / f"eval_beta{beta}.json").exists()]
    out["GRPO"] = [summary(r)["after"]["accuracy"] for r in seeds(task / "grpo")]
    return out


def table(task: Path) -> str:
    completions, tokens = data_cost(task / "samples.jsonl")
    grpo = [summary(r) for r in seeds(task / "grpo")]
    grpo_calls = [s["steps"] * 128 for s in grpo]
    grpo_tokens = [s["tokens_generated"] for s in grpo]
    lines = ["| | held-out greedy accuracy (%) | seeds | model calls | generated tokens |",
             "|---|---|---|---|---|"]
    for label, values in accuracies(task).items():
        if not values:
            continue
        if label == "GRPO":
            cost = f"{int(np.mean(grpo_calls))} | {int(np.mean(grpo_tokens))}"
        elif label == "shipped model":
            cost = "0 | 0"
        else:
            cost = f"{completions} (the data) | {tokens}"
        cells = ", ".join(f"{100 * v:.1f}" for v in values)
        lines.append(f"| {label} | {spread(values)} | {cells} | {cost} |")
    return "\n".join(lines)


@torch.no_grad()
def divergence(run: Path, samples: Path, limit: int = 300) -> tuple[float, float, float]:
    """Where a successful and a failed sample of one prompt first differ: the share of such
    states where the target Q prefers the successful token, the mean Q gap, and the share where
    the behaviour-cloned logits prefer it (the data's first ``limit`` such prompts)."""
    from explorl.algorithms.ilql import HEADS_FILE, META_FILE, ILQLHeads
    from explorl.models.policy import load_model, load_tokenizer

    final = run / "final"
    model, tok = load_model(str(final)).eval(), load_tokenizer(str(final))
    meta = json.loads((final / META_FILE).read_text())
    heads = ILQLHeads(meta["hidden_size"], meta["vocab_size"], meta["two_qs"])
    heads.load_state_dict(load_file(str(final / HEADS_FILE)))
    by_prompt: dict[str, list] = {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        by_prompt.setdefault(row["prompt"], []).append(row)
    q_gaps, logit_wins, captured = [], [], {}
    hook = model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: captured.update(h=args[0]))
    for prompt, rows in by_prompt.items():
        good = [r["completion"] for r in rows if r["reward"] >= 1]
        bad = [r["completion"] for r in rows if r["reward"] < 1]
        pair = next(((g, b) for g in good for b in bad if g != b), None)
        if pair is None:
            continue
        g, b = (tok(x, add_special_tokens=False).input_ids + [tok.eos_token_id] for x in pair)
        k = next(i for i in range(min(len(g), len(b))) if g[i] != b[i])
        ids = torch.tensor([tok(prompt, add_special_tokens=False).input_ids + g[:k]])
        logits = model(ids).logits[0, -1]
        q = heads.target(captured["h"][0, -1])
        q_gaps.append(float(q[g[k]] - q[b[k]]))
        logit_wins.append(float(logits[g[k]] > logits[b[k]]))
        if len(q_gaps) >= limit:
            break
    hook.remove()
    return float(np.mean(np.array(q_gaps) > 0)), float(np.mean(q_gaps)), float(np.mean(logit_wins))


def mean_curve(runs: list[Path], key: str) -> tuple[np.ndarray, np.ndarray]:
    curves = [series(read_metrics(r / "metrics.jsonl"), key) for r in runs]
    curves = [c for c in curves if len(c[1])]
    width = min(len(c[1]) for c in curves)
    return curves[0][0][:width], np.mean([c[1][:width] for c in curves], axis=0)


def figures(task: Path, out: Path) -> list[Path]:
    runs, written = seeds(task / "ilql"), []
    for keys, name, title, log in ((LOSSES, "losses", "ILQL losses", True),
                                   (ADVANTAGES, "advantage", "ILQL: Q - V of the data's tokens",
                                    False)):
        fig, ax = new_figure(f"{title} ({task.name}, mean of {len(runs)} seeds)", "step",
                             "loss (log scale)" if log else "Q - V")
        for i, key in enumerate(keys):
            x, y = mean_curve(runs, key)
            ax.plot(x, moving_average(y, 25), color=f"C{i}", label=key.split("/")[1])
        if log:
            ax.set_yscale("log")
        ax.legend(loc="best", fontsize="small")
        written.append(save_figure(fig, out / f"{task.name}_{name}.png"))
    acc = accuracies(task)
    fig, ax = new_figure(f"Held-out accuracy against decoding beta ({task.name})", "beta",
                         "held-out greedy accuracy (%)")
    ilql = [acc[f"ILQL, beta {b}"] for b in BETAS]
    ax.errorbar(BETAS, [100 * np.mean(v) for v in ilql],
                yerr=[100 * np.std(v, ddof=1) for v in ilql], marker="o", label="ILQL")
    for i, label in enumerate(("shipped model", "filtered BC", "GRPO")):
        if acc[label]:
            ax.axhline(100 * np.mean(acc[label]), color=f"C{i + 1}", linestyle="--",
                       label=label)
    ax.legend(loc="best", fontsize="small")
    written.append(save_figure(fig, out / f"{task.name}_beta.png"))
    return written


def main(root: str, img: str) -> None:
    for task in sorted(p for p in Path(root).iterdir() if (p / "samples.jsonl").exists()):
        print(f"## {task.name}\n\n{table(task)}\n")
        print("| ILQL seed | states | target Q prefers the successful token | mean Q gap | "
              "the logits prefer it |\n|---|---|---|---|---|")
        for run in seeds(task / "ilql"):
            share, gap, logits = divergence(run, task / "samples.jsonl")
            print(f"| {run.name} | first divergence | {100 * share:.0f}% | {gap:+.3f} | "
                  f"{100 * logits:.0f}% |")
        print()
        for path in figures(task, Path(img)):
            print(f"![{path.stem}]({path})")
        print()


if __name__ == "__main__":
    main(*sys.argv[1:3])

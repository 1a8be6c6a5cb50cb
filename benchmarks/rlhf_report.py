"""Figures and tables for the RLHF evidence, from the folder ``benchmarks/rlhf.sh`` wrote.

    python benchmarks/rlhf_report.py runs/rlhf docs/img/rlhf

Part 1 (``exact/``): held-out greedy accuracy before and after and generated tokens, per seed,
and the gain as mean ± sample std (step time: ``benchmarks/ppo_step_time.py``). Part 2
(``rm_reward/``): the same, plus the reward model's score and the true accuracy of the sampled
completions over the first and last 25 steps, and figures of both against generated tokens
(over-optimisation shows as the score rising while true accuracy does not).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from explorl.report import aggregate
from explorl.tracking import read_metrics

EDGE = 25  # steps averaged at the start and at the end of a run


def runs_by_label(root: Path) -> dict[str, list[Path]]:
    groups = {d.name: sorted(p for p in d.iterdir() if (p / "summary.json").exists())
              for d in sorted(root.iterdir()) if d.is_dir()}
    return {label: runs for label, runs in groups.items() if runs}


def mean_of(records: list[dict], key: str) -> float:
    vals = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return float(np.mean(vals)) if vals else float("nan")


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def table(groups: dict[str, list[Path]], rm_score: bool) -> str:
    head = ["config", "seed", "held-out before", "after", "gain", "tokens"]
    if rm_score:
        head += ["RM score first/last", "train acc first/last"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in groups.items():
        gains = []
        for run in runs:
            s = json.loads((run / "summary.json").read_text())
            m = read_metrics(run / "metrics.jsonl")
            before, after = 100 * s["before"]["accuracy"], 100 * s["after"]["accuracy"]
            gains.append(after - before)
            cells = [label, run.name, f"{before:.1f}", f"{after:.1f}", f"{after - before:+.1f}",
                     str(s["tokens_generated"])]
            if rm_score:
                key = "reward/reward_model/mean"
                cells += [f"{mean_of(m[:EDGE], key):.2f} / {mean_of(m[-EDGE:], key):.2f}",
                          f"{100 * mean_of(m[:EDGE], 'accuracy'):.1f} / "
                          f"{100 * mean_of(m[-EDGE:], 'accuracy'):.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(f"| **{label}** | mean ± std | | | **{spread(gains)}** |" + " |" * (
            len(head) - 5))
    return "\n".join(lines)


def main(root: Path, out: Path) -> None:
    for part, rm_score in (("exact", False), ("rm_reward", True)):
        if not (root / part).is_dir():
            continue
        groups = runs_by_label(root / part)
        metrics = ("accuracy", "reward/reward_model/mean", "ppo/kl", "completion_length/mean") \
            if rm_score else ("accuracy", "entropy", "ppo/value_loss", "completion_length/mean")
        aggregate(groups, out / part, metrics=metrics)
        print(f"## {part}\n\n{table(groups, rm_score)}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

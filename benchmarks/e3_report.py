"""Figures and a table for the E3 comparison, from the folder ``explorl compare`` wrote.

    explorl compare grpo e3_budget e3_temperature e3 --seeds 3 --output runs/e3 \
        --set learning_rate=2e-4 --set max_steps=500 --set eval_pass_k=1,2,4,8,16
    python benchmarks/e3_report.py runs/e3 docs/img/e3

Writes ``pass_at_k.png`` (held-out pass@k against k, mean over seeds, each configuration and the
shipped model before training), per-step curves against generated tokens (entropy at the
sampling temperature and at T = 1, temperature, share of rollouts in all-wrong and all-right
groups, train accuracy) and prints a Markdown table of per-seed numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from explorl.report import aggregate
from explorl.tracking import new_figure, read_metrics, save_figure

CURVES = ("entropy", "entropy_t1", "temperature", "frac_rollouts_all_wrong",
          "frac_rollouts_all_right", "accuracy")


def runs_by_label(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if (p / "summary.json").exists())
            for d in sorted(root.iterdir()) if d.is_dir()}


def mean_over(records: list[dict], key: str, last: int = 50) -> float:
    vals = [r[key] for r in records[-last:] if isinstance(r.get(key), (int, float))]
    return float(np.mean(vals)) if vals else float("nan")


def main(root: Path, out: Path) -> None:
    groups = runs_by_label(root)
    out.mkdir(parents=True, exist_ok=True)
    aggregate(groups, out, metrics=CURVES)
    fig, ax = new_figure("Held-out pass@k (1000 prompts, T = 1)", "k", "pass@k")
    base = None
    lines = ["| config | seed | greedy | pass@1 | pass@16 | entropy first/last 50 steps | "
             "T last 50 | rollouts in all-wrong / all-right groups (last 50) | tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, (label, runs) in enumerate(groups.items()):
        curves = []
        for run in runs:
            s = json.loads((run / "summary.json").read_text())
            m = read_metrics(run / "metrics.jsonl")
            ks = sorted(s["after"]["pass_at_k"], key=int)
            curves.append([s["after"]["pass_at_k"][k] for k in ks])
            base = base or (ks, [s["before"]["pass_at_k"][k] for k in ks])
            first = float(np.mean([r["entropy"] for r in m[:50]]))
            lines.append(
                f"| {label} | {run.name} | {100 * s['after']['accuracy']:.1f} | "
                f"{100 * s['after']['pass_at_k']['1']:.1f} | "
                f"{100 * s['after']['pass_at_k']['16']:.1f} | "
                f"{first:.3f} / {mean_over(m, 'entropy'):.3f} | "
                f"{mean_over(m, 'temperature'):.2f} | "
                f"{mean_over(m, 'frac_rollouts_all_wrong'):.2f} / "
                f"{mean_over(m, 'frac_rollouts_all_right'):.2f} | {s['tokens_generated']} |")
        ks_int = [int(k) for k in ks]
        c = np.array(curves)
        ax.errorbar(ks_int, c.mean(0), yerr=c.std(0, ddof=1) if len(c) > 1 else None,
                    marker="o", capsize=3, color=f"C{i}", label=label)
    if base:
        ax.plot([int(k) for k in base[0]], base[1], "k--", marker="s", label="shipped model")
        lines.insert(2, f"| shipped model | - | - | {100 * base[1][0]:.1f} | "
                        f"{100 * base[1][-1]:.1f} | | | | |")
    ax.set_xscale("log", base=2)
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, out / "pass_at_k.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""The table of ``benchmarks/calculator_herl.sh``: held-out greedy accuracy after training (all
levels, and the levels the tool serves best, L7), the share of prompts with a tool call, steps
and the teacher's scored tokens, mean ± sd over seeds.

    python benchmarks/calculator_herl_report.py runs/calculator_herl
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ARMS = {"grpo": "GRPO", "herl": "HeRL (distill)", "herl_blank": "HeRL, lists blank (control)",
        "herl_revise": "HeRL revisions, LUFFY form"}


def runs(root: Path, label: str) -> list[tuple[dict, list[dict]]]:
    out = []
    for seed in sorted((root / label / label).glob("seed*")):
        metrics = [json.loads(x) for x in (seed / "metrics.jsonl").read_text().splitlines()]
        out.append((json.loads((seed / "summary.json").read_text()), metrics))
    return out


def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def main(root: Path) -> None:
    arms = {label: runs(root, label) for label in ARMS if (root / label).exists()}
    print("| | " + " | ".join(ARMS[k] for k in arms) + " |")
    print("|---|" + "---|" * len(arms))
    rows = {
        "accuracy before": lambda s, m: s["before"]["accuracy"],
        "accuracy after": lambda s, m: s["after"]["accuracy"],
        "accuracy after, per seed": None,
        "L7 after": lambda s, m: s["after"]["by_level"]["L7"],
        "prompts with a call, after": lambda s, m: s["after"]["call_rate"],
    }
    for name, get in rows.items():
        if get is None:
            cells = [", ".join(f"{100 * s['after']['accuracy']:.1f}" for s, _ in v)
                     for v in arms.values()]
        else:
            cells = [spread([get(s, m) for s, m in v]) for v in arms.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| steps | " + " | ".join(f"{statistics.mean(s['steps'] for s, _ in v):.0f}"
                                    for v in arms.values()) + " |")
    print("| teacher-scored tokens (k) | " + " | ".join(
        spread([sum(r.get("herl/teacher_tokens", 0) for r in m) for _, m in v], 1e-3, 0)
        for v in arms.values()) + " |")
    print("| train seconds | " + " | ".join(
        spread([s["train_seconds"] for s, _ in v], 1.0, 0) for v in arms.values()) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""The calculator comparison's table: held-out greedy accuracy before and after, by level, and
how often the model calls the tool, mean and spread over seeds (``benchmarks/calculator.sh``).

    python benchmarks/calculator_report.py runs/calculator > benchmarks/results/calculator.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

LEVELS = [f"L{i}" for i in range(8)]


def summaries(root: Path, label: str) -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted((root / label / label).glob("seed*/summary.json"))]


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def main(root: Path) -> None:
    runs = {label: summaries(root, label) for label in ("with_tool", "without_tool")}
    print(f"seeds: {', '.join(f'{k} {len(v)}' for k, v in runs.items())}; mean ± sd in %\n")
    print("| | with the tool | without it |\n|---|---|---|")
    for stage in ("before", "after"):
        print(f"| accuracy {stage} | "
              + " | ".join(spread([s[stage]["accuracy"] for s in v]) for v in runs.values())
              + " |")
    tool = runs["with_tool"]
    for stage in ("before", "after"):
        print(f"| prompts with a tool call, {stage} | "
              f"{spread([s[stage]['call_rate'] for s in tool])} | |")
    print(f"| steps | {statistics.mean(s['steps'] for s in tool):.0f} | "
          f"{statistics.mean(s['steps'] for s in runs['without_tool']):.0f} |")
    print("\n| level | accuracy after, with | without | prompts with a call, before | after |")
    print("|---|---|---|---|---|")
    for level in LEVELS:
        cells = [spread([s["after"]["by_level"][level] for s in v]) for v in runs.values()]
        calls = [spread([s[stage]["call_rate_by_level"][level] for s in tool])
                 for stage in ("before", "after")]
        print(f"| {level} | {' | '.join(cells)} | {' | '.join(calls)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Figures and tables for the HeRL comparison, from folders ``explorl compare`` wrote.

    bash benchmarks/herl_compare.sh   (the reference's revisions: herl.teach=revise)
    python benchmarks/herl_report.py runs/herl docs/img/herl

For each task folder under the root: held-out strict success and dense reward against generated
tokens (``aggregate``), a per-seed table, and test-time self-improvement (rounds 0-3, greedy)
of the shipped model and of every trained run. Writes ``benchmarks/results/herl.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from explorl.data import rubric_task
from explorl.improve import hindsight_probe, improve
from explorl.models.policy import load_model, load_tokenizer
from explorl.report import aggregate
from explorl.rewards.rubric import RubricReward
from explorl.rollout.engine import HFEngine

CURVES = ("eval/accuracy", "eval/dense", "accuracy", "herl/revision_success", "herl/replaced")
ROUNDS, SIZE = 3, 300


def rounds(model_path: str, task: str, lists: str = "shown") -> list[float]:
    rows = rubric_task.splits(0, SIZE, rubric_task.VARIANTS[task])[1]
    tokenizer = load_tokenizer(model_path)
    out = improve(HFEngine(load_model(model_path), tokenizer), tokenizer, rows,
                  rubric_task.REVISE_TEMPLATE, ROUNDS, lists=lists)
    return out["success_by_round"]


def probe(model_path: str, task: str) -> dict:
    rows = rubric_task.splits(0, SIZE, rubric_task.VARIANTS[task])[1]
    tokenizer = load_tokenizer(model_path)
    return hindsight_probe(HFEngine(load_model(model_path), tokenizer), tokenizer, rows,
                           RubricReward("strict"), rubric_task.REVISE_TEMPLATE,
                           max_new_tokens=12)


def task_report(root: Path, out: Path) -> dict:
    task = root.name
    groups = {d.name: sorted(p for p in d.iterdir() if (p / "summary.json").exists())
              for d in sorted(root.iterdir()) if d.is_dir()}
    groups = {k: v for k, v in groups.items() if v}
    aggregate(groups, out / task, metrics=CURVES)
    report = {"before": {"probe": probe("tiny", task), "rounds": rounds("tiny", task),
                         "rounds_blank": rounds("tiny", task, "blank")}, "configs": {}}
    for label, runs in groups.items():
        entry = report["configs"][label] = {"seeds": []}
        for run in runs:
            s = json.loads((run / "summary.json").read_text())
            entry["seeds"].append({
                "run": run.name, "success": s["after"]["accuracy"],
                "dense": s["after"].get("dense"), "tokens": s["tokens_generated"],
                "steps": s["steps"], "rounds": rounds(str(run / "final"), task)})
        for key in ("success", "dense"):
            vals = [x[key] for x in entry["seeds"] if x[key] is not None]
            entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1))
                          if len(vals) > 1 else 0.0}
        entry["rounds"] = np.mean([x["rounds"] for x in entry["seeds"]], axis=0).tolist()
    return report


def markdown(task: str, report: dict) -> str:
    b = report["before"]
    lines = [f"### {task}", "",
             f"Shipped model: strict success {100 * b['rounds'][0]:.1f}% greedy; test-time "
             "rounds 0-3 " + " / ".join(f"{100 * v:.1f}" for v in b["rounds"]) +
             " (blank lists: " + " / ".join(f"{100 * v:.1f}" for v in b["rounds_blank"]) + ")",
             "", "| config | strict success | dense | per seed (success) | tokens | steps | "
             "test-time rounds 0-3 |", "|---|---|---|---|---|---|---|"]
    for label, e in report["configs"].items():
        seeds = e["seeds"]
        lines.append(
            f"| {label} | {100 * e['success']['mean']:.1f} ± {100 * e['success']['std']:.1f} | "
            f"{100 * e['dense']['mean']:.1f} | "
            + " / ".join(f"{100 * s['success']:.1f}" for s in seeds) + " | "
            + f"{np.mean([s['tokens'] for s in seeds]) / 1e3:.0f}k | "
            + f"{np.mean([s['steps'] for s in seeds]):.0f} | "
            + " / ".join(f"{100 * v:.1f}" for v in e["rounds"]) + " |")
    return "\n".join(lines)


def main(root: Path, out: Path) -> None:
    results = {}
    for task_root in sorted(p for p in root.iterdir() if p.is_dir()):
        results[task_root.name] = task_report(task_root, out)
        print(markdown(task_root.name, results[task_root.name]) + "\n")
    path = Path(__file__).parent / "results" / "herl.json"
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

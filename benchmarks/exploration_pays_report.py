"""Tables and figures for docs/exploration-pays.md, from the folders
``benchmarks/exploration_pays.sh`` wrote (one per task, one sub-folder per configuration,
``seed<k>`` below it).

    python benchmarks/exploration_pays_report.py runs/pays docs/img/exploration_pays

Everything :mod:`exploration_report` reports per configuration (held-out greedy success,
criteria met, the hidden criterion, pass@k, entropy, zero-advantage groups, tokens, steps,
test-time rounds), and besides: wall time, the teacher's forward tokens, the share of
revisions that met every criterion (first and last 20 steps), each loss term's mean gradient
weight per step (``grad/<term>/up`` and ``/down``), and held-out success against wall time.
Writes ``benchmarks/results/exploration_pays.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import exploration_report as base  # noqa: E402

from explorl.tracking import new_figure, save_figure  # noqa: E402

base.CURVES = base.CURVES + ("herl/distilled", "distill/divergence", "loss/distill",
                             "loss/sft", "herl/replaced")


def extras(run: Path) -> dict:
    records = base.read(run)
    revision = [r["herl/revision_success"] for r in records if "herl/revision_success" in r]
    weights = {k: float(np.mean([r[k] for r in records if k in r]))
               for k in sorted({k for r in records for k in r if k.startswith("grad/")})}
    return {**weights, "seconds": float(sum(r.get("time/step", 0.0) for r in records)),
            "teacher_tokens": float(sum(r.get("herl/teacher_tokens", 0) for r in records)),
            "revision_first": float(np.mean(revision[:20])) if revision else None,
            "revision_last": float(np.mean(revision[-20:])) if revision else None}


def wall_time_figure(root: Path, out: Path) -> None:
    """Held-out success against seconds of training (evaluation excluded), per configuration,
    the mean over seeds at each evaluation."""
    fig, ax = new_figure(f"{root.name}: held-out success vs training time", "seconds",
                         "held-out success")
    for i, config in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        curves = []
        for run in sorted(config.glob("seed*")):
            clock, points = 0.0, []
            for r in base.read(run):
                clock += r.get("time/step", 0.0)
                if r.get("eval/accuracy") is not None:
                    points.append((clock, r["eval/accuracy"]))
            if points:
                curves.append(points)
        if not curves:
            continue
        n = min(len(c) for c in curves)
        x = np.mean([[p[0] for p in c[:n]] for c in curves], axis=0)
        y = np.mean([[p[1] for p in c[:n]] for c in curves], axis=0)
        ax.plot(x, y, color=f"C{i % 10}", linestyle="-" if i < 10 else "--", marker="o",
                markersize=3, label=config.name)
    ax.legend(loc="best", fontsize="small")
    save_figure(fig, out / root.name / "eval_accuracy_vs_seconds.png")


def main(root: Path, out: Path) -> None:
    results = {}
    for task_root in sorted(p for p in root.iterdir() if p.is_dir()):
        report = base.task_report(task_root, out)
        for label, entry in report["configs"].items():
            runs = sorted((task_root / label).glob("seed*"))
            seeds = [extras(run) for run in runs]
            for key in seeds[0]:
                known = [s[key] for s in seeds if s[key] is not None]
                if known:
                    entry[key] = base.spread(known)
        wall_time_figure(task_root, out)
        results[task_root.name] = report
        print(base.markdown(task_root.name, report) + "\n", flush=True)
        for label, e in report["configs"].items():
            line = f"  {label}: {e['seconds']['mean']:.0f} s"
            if e.get("teacher_tokens", {}).get("mean"):
                line += f", teacher tokens {e['teacher_tokens']['mean'] / 1e3:.0f}k"
            if "revision_first" in e:
                line += (f", revision success {100 * e['revision_first']['mean']:.0f}% -> "
                         f"{100 * e['revision_last']['mean']:.0f}%")
            print(line)
    path = Path(__file__).parent / "results" / "exploration_pays.json"
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

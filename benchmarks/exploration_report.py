"""Tables and figures for docs/exploration.md, from the folders ``benchmarks/exploration.sh``
wrote (one per task, one sub-folder per configuration, ``seed<k>`` below it).

    python benchmarks/exploration_report.py runs/exploration docs/img/exploration

Per configuration, mean ± sample std over seeds: held-out greedy success (strict for the rubric
task) and, for the rubric task, the share of criteria met and the hidden criterion alone (greedy
answers of the final model, 500 held-out prompts), pass@1/4/16, token entropy of the first and
last 50 steps, zero-advantage groups (dropped ones included for dynamic sampling), generated
tokens and steps; for the rubric task also test-time rounds 0-3 (``explorl improve``, greedy,
300 held-out prompts). Writes ``benchmarks/results/exploration.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from explorl.data import rubric_task
from explorl.data.prompts import PromptCodec
from explorl.exploration.hindsight import criteria_of
from explorl.improve import hindsight_probe, improve
from explorl.models.policy import load_model, load_tokenizer
from explorl.report import aggregate
from explorl.rewards.rubric import RubricReward
from explorl.rollout.engine import HFEngine

CURVES = ("entropy", "frac_zero_std_groups", "accuracy", "eval/dense", "herl/revision_success",
          "temperature", "entropy_coef")
HELDOUT, ROUNDS_SIZE, ROUNDS = 500, 300, 3


def rubric_rows(task: str, size: int) -> list[dict]:
    return rubric_task.splits(0, size, rubric_task.VARIANTS[task])[1]


def greedy_grades(model_path: str, task: str) -> dict:
    """Strict success, share of criteria met and the hidden (last) criterion alone."""
    rows = rubric_rows(task, HELDOUT)
    tok = load_tokenizer(model_path)
    codec = PromptCodec(tok)
    engine = HFEngine(load_model(model_path), tok)
    ids = engine.greedy([codec.encode(r["prompt"]) for r in rows], 12)
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    prompts = [r["prompt"] for r in rows]
    grades = RubricReward("strict").grade(
        prompts, [codec.completion(p, t) for p, t in zip(prompts, texts)],
        rubric=[criteria_of(r) for r in rows])
    return {"success": float(np.mean([g.strict for g in grades])),
            "dense": float(np.mean([g.dense for g in grades])),
            "hidden": float(np.mean([g.verdicts[-1] for g in grades]))}


def rounds(model_path: str, task: str, lists: str = "shown") -> list[float]:
    tok = load_tokenizer(model_path)
    out = improve(HFEngine(load_model(model_path), tok), tok, rubric_rows(task, ROUNDS_SIZE),
                  rubric_task.REVISE_TEMPLATE, ROUNDS, lists=lists)
    return out["success_by_round"]


def read(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def zero_advantage(records: list[dict]) -> float:
    """Share of sampled groups whose rewards were all equal; under dynamic sampling the dropped
    groups are those, and the trained ones are not."""
    if "dynamic_sampling/dropped_groups" in records[0]:
        dropped = sum(r["dynamic_sampling/dropped_groups"] for r in records)
        trained = sum(len(r.get("samples_per_prompt", [])) or 16 * r[
            "dynamic_sampling/kept_groups"] for r in records)
        return dropped / (dropped + trained)
    return float(np.mean([r["frac_zero_std_groups"] for r in records]))


def seed_entry(run: Path, task: str) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    records = read(run)
    entropy = [r["entropy"] for r in records]
    entry = {"run": run.name, "success": summary["after"]["accuracy"],
             "pass_at_k": summary["after"].get("pass_at_k", {}),
             "tokens": summary["tokens_generated"], "steps": summary["steps"],
             "entropy_first": float(np.mean(entropy[:50])),
             "entropy_last": float(np.mean(entropy[-50:])),
             "zero_advantage": zero_advantage(records),
             "all_fail_first": float(np.mean([r["frac_rollouts_all_wrong"]
                                              for r in records[:10]])),
             "train_success_first": float(np.mean([r["accuracy"] for r in records[:10]]))}
    if task != "arithmetic":
        cached = run / "heldout_eval.json"  # the final model's greedy grades and rounds
        if not cached.exists():
            cached.write_text(json.dumps({**greedy_grades(str(run / "final"), task),
                                          "rounds": rounds(str(run / "final"), task)}))
        entry.update(json.loads(cached.read_text()))
    return entry


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def task_report(root: Path, out: Path) -> dict:
    task = "arithmetic" if root.name == "arithmetic" else root.name
    groups = {d.name: sorted(p for p in d.iterdir() if (p / "summary.json").exists())
              for d in sorted(root.iterdir()) if d.is_dir()}
    groups = {k: v for k, v in groups.items() if v}
    aggregate(groups, out / root.name, metrics=CURVES)
    report: dict = {"configs": {}}
    if task != "arithmetic":
        model = "tiny-rare" if task == "rubric_rare" else "tiny"
        tok = load_tokenizer(model)
        report["before"] = {
            **greedy_grades(model, task), "rounds": rounds(model, task),
            "rounds_blank": rounds(model, task, "blank"),
            "probe": hindsight_probe(HFEngine(load_model(model), tok), tok,
                                     rubric_rows(task, 400), RubricReward("strict"),
                                     rubric_task.REVISE_TEMPLATE, max_new_tokens=12)}
    for label, runs in groups.items():
        seeds = [seed_entry(run, task) for run in runs]
        entry = {"seeds": seeds}
        for key in ("success", "dense", "hidden", "tokens", "steps", "entropy_first",
                    "entropy_last", "zero_advantage", "all_fail_first", "train_success_first"):
            if key in seeds[0]:
                entry[key] = spread([s[key] for s in seeds])
        entry["pass_at_k"] = {k: spread([s["pass_at_k"][k] for s in seeds])
                              for k in seeds[0]["pass_at_k"]}
        if "rounds" in seeds[0]:
            entry["rounds"] = np.mean([s["rounds"] for s in seeds], axis=0).tolist()
        report["configs"][label] = entry
    return report


def pm(e: dict, scale: float = 100, digits: int = 1) -> str:
    return f"{scale * e['mean']:.{digits}f} ± {scale * e['std']:.{digits}f}"


def markdown(task: str, report: dict) -> str:
    rubric = task != "arithmetic"
    head = ["config", "held-out success", "per seed"]
    head += ["criteria met", "hidden criterion"] if rubric else []
    head += ["pass@1", "pass@4", "pass@16", "entropy first / last 50 steps",
             "zero-advantage groups", "tokens", "steps"]
    head += ["test-time rounds 0-3"] if rubric else []
    lines = [f"### {task}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for label, e in report["configs"].items():
        cells = [label, pm(e["success"]),
                 " / ".join(f"{100 * s['success']:.1f}" for s in e["seeds"])]
        if rubric:
            cells += [pm(e["dense"]), pm(e["hidden"])]
        cells += [pm(e["pass_at_k"][k]) if k in e["pass_at_k"] else "" for k in ("1", "4", "16")]
        change = e["entropy_last"]["mean"] / e["entropy_first"]["mean"] - 1
        cells += [f"{e['entropy_first']['mean']:.3f} / {e['entropy_last']['mean']:.3f} "
                  f"({100 * change:+.0f}%)", f"{100 * e['zero_advantage']['mean']:.1f}%",
                  f"{e['tokens']['mean'] / 1e3:.0f}k", f"{e['steps']['mean']:.0f}"]
        if rubric:
            cells += [" / ".join(f"{100 * v:.1f}" for v in e["rounds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(root: Path, out: Path) -> None:
    results = {}
    for task_root in sorted(p for p in root.iterdir() if p.is_dir()):
        results[task_root.name] = task_report(task_root, out)
        print(markdown(task_root.name, results[task_root.name]) + "\n", flush=True)
    path = Path(__file__).parent / "results" / "exploration.json"
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Bit-identity of training runs across a change of the code: what a refactor must not move.

Runs a fixed set of short runs (the embedded default, HeRL, E3, PPO with two mini-batches and
adaptive KL, GRPO with two iterations and KL, the exploration baselines, ILQL, filtered BC, a
reward model) with the explorl found on ``PYTHONPATH`` and records every metric but ``time/*``,
the summaries and a hash of every saved tensor. ``compare`` lists what differs between two
records.

    PYTHONPATH=src python benchmarks/identity.py record OUT.json [--cases a,b] [--jobs 2]
    python benchmarks/identity.py compare A.json B.json

``benchmarks/results/identity_before.json.gz`` was recorded at the commit before the loss became
a sum of named terms and the three run loops one (with the flat names of that version:
``top_entropy_quantile=0.5 use_adaptive_entropy=true entropy_coef=0.001 entropy_target=0.5``
and ``dynamic_sampling=true``), ``identity_after.json.gz`` after it; ``identity.txt`` is what
``compare`` says of them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHORT = ["max_steps=30", "eval_size=100", "eval_every=10", "save_every=15", "plots=false",
         "progress=false"]
CASES: dict[str, list[str]] = {
    "default": ["plots=false", "progress=false"],
    "herl": ["method=herl", "log_completions_every=10", *SHORT],
    "herl_both_on_policy": ["method=herl", "herl.context=both", "herl.baseline=on_policy",
                            "micro_batch_tokens=600", *SHORT],
    "e3": ["method=e3", "e3.budget_rule=mixed", *SHORT],
    "ppo": ["method=ppo", "ppo.num_mini_batches=2", "ppo.adaptive_kl=true", *SHORT],
    "grpo_iterations_kl": ["num_iterations=2", "beta=0.04", "epsilon_high=0.28",
                           "micro_batch_size=40", *SHORT],
    "cispo_sequence": ["loss_type=cispo", "epsilon_high=5", "num_iterations=2",
                       "importance_sampling_level=sequence", *SHORT],
    "baselines": ["entropy.top_quantile=0.5", "entropy.adaptive=true", "entropy.coef=0.001",
                  "entropy.target=0.5", *SHORT],
    "dynamic_sampling": ["method=dynamic_sampling", *SHORT],
}
OFFLINE = {
    "ilql": ["method=ilql", "eval_dataset=arithmetic", "train_batch_size=32", *SHORT],
    "filtered_bc": ["method=filtered_bc", "eval_dataset=arithmetic", "train_batch_size=32",
                    *SHORT],
}
RM = ["max_steps=30", "batch_size=16", "eval_every=10", "save_every=15", "plots=false",
      "progress=false"]


def explorl(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "explorl.cli", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def tensor_hashes(folder: Path) -> dict[str, str]:
    import torch
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for name, t in sorted(load_file(path).items()):
            key = f"{path.relative_to(folder)}:{name}"
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            out[key] = hashlib.sha256(raw).hexdigest()
    return out


def record_run(run: Path) -> dict:
    metrics = [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "final" / "summary.json").read_text()) \
        if (run / "final" / "summary.json").exists() else \
        json.loads((run / "summary.json").read_text())
    summary.pop("train_seconds", None)
    completions = (run / "completions.jsonl")
    return {"metrics": metrics, "summary": summary,
            "completions": hashlib.sha256(completions.read_bytes()).hexdigest()
            if completions.exists() else None,
            "tensors": tensor_hashes(run)}


def record(out: Path, cases: list[str], jobs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="explorl-identity-"))

    def online(name: str) -> tuple[str, dict]:
        explorl("train", f"output_dir={work / name}", *CASES[name])
        return name, record_run(work / name)

    def offline() -> dict:
        samples, pairs = work / "samples.jsonl", work / "pairs.jsonl"
        explorl("sample", "tiny", "--n", "4", "--size", "200", "--out", str(samples))
        explorl("pairs", str(samples), "--out", str(pairs), "--per-prompt", "2")
        found = {"samples": {"file": hashlib.sha256(samples.read_bytes()).hexdigest()},
                 "pairs": {"file": hashlib.sha256(pairs.read_bytes()).hexdigest()}}
        for name, args in OFFLINE.items():
            if name in cases:
                explorl("train", f"output_dir={work / name}", f"dataset={samples}", *args)
                found[name] = record_run(work / name)
        if "rm" in cases:
            explorl("rm", f"output_dir={work / 'rm'}", f"dataset={pairs}", *RM)
            found["rm"] = record_run(work / "rm")
        return found

    results: dict = {}
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(online, c) for c in cases if c in CASES]
        extra = pool.submit(offline) if set(cases) & {*OFFLINE, "rm"} else None
        for f in futures:
            name, value = f.result()
            results[name] = value
        if extra:
            results.update(extra.result())
    out.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"{len(results)} records in {out} (runs in {work})")


def read_record(path: Path) -> dict:
    """A record, plain or gzipped (``.json.gz``)."""
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)


def _differences(x: list[dict], y: list[dict]) -> dict[str, set]:
    """Per-step records compared key by key: keys only before, only after, changed values."""
    out: dict[str, set] = {"removed": set(), "added": set(), "changed": set()}
    for m1, m2 in zip(x, y):
        out["removed"] |= set(m1) - set(m2)
        out["added"] |= set(m2) - set(m1)
        out["changed"] |= {k for k in set(m1) & set(m2) if m1[k] != m2[k]}
    return out


def compare(a: Path, b: Path) -> int:
    """What differs from record ``a`` to record ``b``; exit code 1 when a shared metric, a
    summary or a tensor changed (added or removed metric keys are listed, not failures)."""
    left, right = read_record(a), read_record(b)
    changed = 0
    for name in sorted(set(left) | set(right)):
        x, y = left.get(name), right.get(name)
        if x is None or y is None:
            print(f"{name}: only in {'B' if x is None else 'A'}")
            changed += 1
            continue
        notes = []
        for part in sorted(set(x) | set(y)):
            if x.get(part) == y.get(part):
                continue
            if part == "metrics" and len(x[part]) == len(y[part]):
                diff = _differences(x[part], y[part])
                notes += [f"metrics {kind}: {', '.join(sorted(keys))}"
                          for kind, keys in diff.items() if keys]
                changed += bool(diff["changed"] or diff["removed"])
            elif part == "summary":
                keys = sorted(k for k in set(x[part]) | set(y[part])
                              if x[part].get(k) != y[part].get(k))
                moved = [f"{k} {x[part].get(k)!r} -> {y[part].get(k)!r}" for k in keys]
                notes.append("summary changed: " + ", ".join(moved))
                changed += 1
            else:
                notes.append(f"{part} changed")
                changed += 1
        print(f"{name}: " + ("identical" if not notes else "; ".join(notes)))
    return 1 if changed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("out", type=Path)
    r.add_argument("--cases", default=",".join([*CASES, *OFFLINE, "rm"]))
    r.add_argument("--jobs", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    ns = p.parse_args()
    if ns.command == "record":
        record(ns.out, ns.cases.split(","), ns.jobs)
        return 0
    return compare(ns.a, ns.b)


if __name__ == "__main__":
    sys.exit(main())

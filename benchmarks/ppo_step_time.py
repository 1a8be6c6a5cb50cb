"""Step time of PPO (policy + critic, 4 epochs) against GRPO (1 pass), side by side in one run.

    python benchmarks/ppo_step_time.py [ROUNDS] [STEPS]

Alternates GRPO and PPO runs of the embedded default (``STEPS`` steps each, 3 x 40 by default)
so that machine noise falls on both alike, and prints the median seconds per step and per part
(generation, reward, update) over all rounds, with the PPO/GRPO ratios.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from explorl import TrainConfig, Trainer
from explorl.tracking import read_metrics

PARTS = ("time/step", "time/generate", "time/update")


def one_run(method: str, steps: int, out: Path) -> dict[str, list[float]]:
    cfg = TrainConfig(method=method, max_steps=steps, output_dir=str(out), eval_size=10,
                      eval_every=0, save_every=0, progress=False, plots=False)
    Trainer(cfg).train()
    rows = read_metrics(out / "metrics.jsonl")[2:]  # the first steps warm caches up
    return {k: [r[k] for r in rows] for k in PARTS}


def main(rounds: int = 3, steps: int = 40) -> None:
    times: dict[str, dict[str, list[float]]] = {m: {k: [] for k in PARTS} for m in ("grpo", "ppo")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for method in times:
                for k, v in one_run(method, steps, Path(tmp) / f"{method}{r}").items():
                    times[method][k] += v
    print("| seconds (median) | " + " | ".join(PARTS) + " |\n|---|---|---|---|")
    med = {m: {k: float(np.median(v)) for k, v in t.items()} for m, t in times.items()}
    for method in med:
        print(f"| {method} | " + " | ".join(f"{med[method][k]:.3f}" for k in PARTS) + " |")
    print("| ppo / grpo | " + " | ".join(f"{med['ppo'][k] / med['grpo'][k]:.2f}"
                                          for k in PARTS) + " |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

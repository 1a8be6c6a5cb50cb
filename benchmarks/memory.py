"""Resident memory over a default training run: does it grow with the step count?

Trains the embedded default in-process (600 steps, no periodic evaluation, no plots), reads
VmRSS from /proc/self/status after every step, and fits a least-squares line over steps
100..600 (the first steps allocate caches, optimizer state and the allocator's pools).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory.py

Writes ``benchmarks/results/memory.json``. Linux only (/proc).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import transformers

from explorl import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 600
FIT_FROM = 100


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError("no VmRSS in /proc/self/status")


class MeasuredTrainer(Trainer):
    """Records resident memory after each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rss: dict[int, float] = {}

    def step(self, step: int) -> dict:
        metrics = super().step(step)
        self.rss[step] = rss_mb()
        return metrics


def main() -> None:
    if not Path("/proc/self/status").exists():
        sys.exit("memory.py needs Linux /proc")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # a bar per checkpoint write otherwise
    at_start = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = MeasuredTrainer(TrainConfig(output_dir=tmp, max_steps=STEPS, eval_every=0,
                                              plots=False, progress=False))
        after_setup = rss_mb()
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    steps = np.array(sorted(s for s in trainer.rss if s >= FIT_FROM), dtype=float)
    mb = np.array([trainer.rss[int(s)] for s in steps])
    slope, intercept = np.polyfit(steps, mb, 1)
    result = {
        "steps": STEPS,
        "fit_steps": [FIT_FROM, STEPS],
        "slope_mb_per_100_steps": round(100 * slope, 3),
        "fit_residual_std_mb": round(float(np.std(mb - (slope * steps + intercept))), 3),
        "rss_mb": {"process_start": round(at_start, 1), "after_setup": round(after_setup, 1),
                   "step_1": round(trainer.rss[1], 1),
                   f"step_{FIT_FROM}": round(trainer.rss[FIT_FROM], 1),
                   f"step_{STEPS}": round(trainer.rss[STEPS], 1),
                   "max": round(max(trainer.rss.values()), 1)},
        "train_seconds": round(seconds, 1),
        "per_step_rss_mb": [round(trainer.rss[s], 2) for s in sorted(trainer.rss)],
    }
    path = ROOT / "benchmarks" / "results" / "memory.json"
    path.write_text(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_step_rss_mb"}, indent=2))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Calibrates the GPU check's learning test (``gpu_check.py``, section 4) on the CPU: the
same GRPO run (the embedded default, 64 prompts a step) for several seeds, the per-step mean
rewards kept, and for each run the gain of the last 10 steps over the first 10 and the slope
of the reward against the step with its t statistic (``gpu_check.reward_slope``).

    python benchmarks/grpo_check_calibration.py --steps 150 --seeds 5 \\
        --out benchmarks/results/grpo_check_calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402  (puts src/ on the path)

from explorl import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=gpu_check.GRPO_STEPS)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/grpo_check_calibration.json")
    args = parser.parse_args()
    runs = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as folder:
            cfg = TrainConfig(device="cpu", max_steps=args.steps, prompts_per_step=64,
                              eval_size=40, progress=False, plots=False, save_every=0,
                              seed=seed, output_dir=f"{folder}/run")
            Trainer(cfg).train()
            lines = Path(folder, "run", "metrics.jsonl").read_text().splitlines()
        rewards = [json.loads(line)["reward/mean"] for line in lines]
        slope, t = gpu_check.reward_slope(rewards)
        runs.append({"seed": seed, "gain_last10_over_first10":
                     sum(rewards[-10:]) / 10 - sum(rewards[:10]) / 10,
                     "slope_per_100_steps": 100 * slope, "slope_t": t, "rewards": rewards})
        print({k: v for k, v in runs[-1].items() if k != "rewards"}, flush=True)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()

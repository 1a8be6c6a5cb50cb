"""Kill-and-resume at random moments: SIGKILL (or SIGTERM, SIGINT) ``explorl train`` (30 small
steps, a checkpoint every step) at 5 seeded random moments, run the same command again, and
compare the final weights (bit for bit), metrics rows (without time/*) and summary with an
uninterrupted run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kill_resume.py [KILL|TERM|INT]

Writes ``benchmarks/results/kill_resume.json`` (SIGKILL) or ``kill_resume_sigterm.json`` etc.
With SIGTERM and SIGINT the run also checkpoints itself: with ``save_every=1`` that changes
nothing to resume from, so the test is that it stops with its exit code and resumes exactly.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.helpers

from tests.helpers.kill_resume import differences, run_to_end, start_and_kill  # noqa: E402

TRIALS = 5
SEED = 0
# The kill lands this long after config.yaml appears (the output folder is being set up): the
# window covers the evaluation before training, the steps and their checkpoint writes, and the
# end of the run (a kill after the last checkpoint resumes at max_steps).
WINDOW_S = 2.2


def main(name: str = "KILL") -> None:
    sig = signal.Signals[f"SIG{name}"]
    rng = random.Random(SEED)
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        straight = Path(tmp) / "straight"
        run_to_end(straight)
        for i in range(TRIALS):
            out = Path(tmp) / f"trial-{i}"
            delay = rng.uniform(0.0, WINDOW_S)
            kill = start_and_kill(out, delay, after="config.yaml", sig=sig)
            run_to_end(out)
            diff = differences(straight, out)
            trials.append({"trial": i, "delay_after_config_s": round(delay, 3), **asdict(kill),
                           "equal": not diff, "differences": diff})
    equal = sum(t["equal"] for t in trials)
    header = f"{'trial':>5}  {'signal at (s)':>13}  {'killed':>6}  {'exit':>4}  " \
             f"{'mid-ckpt':>8}  {'resumed from':>12}  equal"
    print(header)
    for t in trials:
        print(f"{t['trial']:>5}  {t['seconds_after_start']:>13.2f}  {str(t['killed']):>6}  "
              f"{t['exit_code']:>4}  {str(t['mid_checkpoint']):>8}  {t['resumed_from']:>12}  "
              f"{t['equal']}")
    print(f"{equal}/{TRIALS} resumed runs identical to the uninterrupted run")
    result = {"signal": sig.name, "trials": trials, "equal": equal, "n": TRIALS, "seed": SEED,
              "settings": "max_steps=30 save_every=1 prompts_per_step=4 num_generations=4 "
                          "eval_size=20 task_train_size=200"}
    suffix = "" if sig == signal.SIGKILL else f"_{sig.name.lower()}"
    path = ROOT / "benchmarks" / "results" / f"kill_resume{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main(*sys.argv[1:2])

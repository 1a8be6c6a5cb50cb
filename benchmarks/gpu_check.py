"""The GPU check: everything explorl claims about CUDA, in one run of a few minutes.

    python3 benchmarks/gpu_check.py --out DIR                 # on a GPU machine, from a bare tree
    python3 benchmarks/gpu_check.py --device cpu --small --out DIR   # the script itself, on a CPU

Needs no install: the script puts the tree's ``src/`` on the path, and uses only torch,
transformers, accelerate, numpy, safetensors, pyyaml and pytest (no datasets, math-verify,
reasoning-gym or trl); models are the shipped tiny one and randomly initialised ones built from
a config in code; nothing is downloaded. ``scripts/gpu_rehearsal.sh`` runs it in a virtualenv
holding only the GPU machine's packages. Each section runs in its own guard: a failure records
its traceback and the next section runs; ``DIR/gpu_check.json`` is rewritten after every
section, so a run cut short keeps what it measured.

1. ``tests``: the tests marked ``gpu`` (device placement of every tensor of a GRPO, HeRL + E3 and
   PPO step; a short bf16 run).
2. ``agreement``: loss and whole gradient of one update of the tiny model on its own samples
   (policy loss, KL to the reference, entropy bonus, micro-batches) on the device against the
   CPU in float32, relative to the loss and to the gradient's norm. float32: 1e-4 (summation
   order only). The reduced precisions scale with their unit roundoff u: bf16 autocast on this
   CPU moved the gradient by 0.034-0.051 over 5 batches (seeds 0-4), k = 13 u at most
   (u = 2^-8 = 3.9e-3: cancellation between advantages of both signs amplifies rounding);
   the tolerance is 3 k u: bf16 0.15, TF32 (u = 2^-11 = 4.9e-4, matmul inputs only) 0.02.
3. ``throughput``: a random model of Qwen2.5-0.5B's architecture (hidden 896, 24 layers, vocab
   151,936). Generation with bf16 weights (a bf16 KV cache): tokens/s of ``model.generate``
   (HFEngine), FastEngine's eager decode and its captured decode (``compile_decode``: a CUDA
   graph) at 64 and 256 concurrent sequences, 8 samples of each 64-token prompt as GRPO asks,
   128 new tokens, each timed after a warm-up call of the same shape. The update: forward and
   backward under bf16 autocast (the optimizer step outside the timer, median of 5), tokens/s,
   model FLOP utilisation (``model_flops``: 6 x non-embedding weights x tokens, plus the LM
   head over completion positions and causal attention, over the GPU's dense bf16 peak) and
   peak memory.
4. ``grpo``: 150 steps of the embedded default on the device with 64 prompts a step; the
   least-squares slope of the per-step mean reward must be positive with t >= 2.5 (a run that
   does not learn passes 0.6% of the time). On the CPU (``grpo_check_calibration.py``), seeds
   0-4 gave t = 4.4-7.2 over 150 steps (slope 0.045-0.070 per 100 steps) and only 1.8-4.5
   over 100; the per-step reward spreads by 0.05, 2.4x what 512 independent samples would
   give (samples of one prompt are not independent), so a last-10 against first-10 gain of
   0.02 over 50 steps, the earlier test, is passed by a run that does not learn 20% of the
   time and was failed by seed 1 (gain 0.000).
5. ``pass_k``: held-out greedy accuracy and pass@1/4 of the tiny model on the device.
6. ``herl_e3``: a short HeRL (hindsight self-distillation) + E3 run on the rubric task.
7. ``resume``: a run interrupted after 2 of 4 steps and resumed ends with weights bit-identical
   to the uninterrupted run's.

Prints one table (also written to ``DIR/gpu_check.md``); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # explorl without an install; tests.helpers
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
GROUP = 8  # samples per prompt in the throughput test
GRPO_STEPS, SLOPE_T = 150, 2.5  # see the docstring, section 4
# 3 x (the largest amplification measured with bf16 on the CPU, 13) x each unit roundoff
TOLERANCE = {"float32": 1e-4, "tf32": 3 * 13 * 2**-11, "bf16": 3 * 13 * 2**-8}


def run_gpu_tests() -> dict:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                          "no:cacheprovider", "tests/test_devices.py"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    return {"ok": out.returncode == 0, "summary": tail,
            "seconds": round(time.perf_counter() - start, 1),
            "output": out.stdout[-3000:] if out.returncode else ""}


# --- 2. agreement -------------------------------------------------------------------------------
def trainer_on(device: str, mode: str, folder: str):
    from explorl import TrainConfig, Trainer
    from explorl.config import EntropyConfig

    return Trainer(TrainConfig(
        output_dir=f"{folder}/{device}-{mode}", device=device, bf16=mode == "bf16",
        eval_size=8, task_train_size=64, progress=False, plots=False, micro_batch_size=12,
        beta=0.04, entropy=EntropyConfig(coef=0.01), max_grad_norm=1e6))


def on_policy_batch(trainer):
    """The tiny model's own samples of 8 prompts (random completions are far off-policy, where
    bf16's rounding of very negative log-probs dominates), with random advantages."""
    from explorl.batch import TrainBatch

    torch.manual_seed(0)
    rollout = trainer.engine.generate(trainer.prompt_ids[:8], [4] * 8, [1.0] * 8, 16)
    advantages = torch.randn(len(rollout), 1).expand_as(rollout.completion_mask).contiguous()
    batch = TrainBatch(rollout, torch.zeros(len(rollout)), [""] * len(rollout))
    return batch, advantages, rollout.completion_mask.clone()


def one_update(trainer, batch, advantages, loss_mask) -> tuple[float, torch.Tensor]:
    """The loss and the whole gradient (flat, float32, on the CPU) of one update."""
    from dataclasses import replace

    device = trainer.model.device
    batch = replace(batch, rollout=batch.rollout.to(device), rewards=batch.rewards.to(device))
    from explorl.batch import Advantages

    shard = trainer.update.prepare(batch, Advantages(advantages.to(device)), loss_mask.to(device))
    trainer.optimizer.step = lambda *a, **k: None  # keep the gradients: no step
    trainer.optimizer.zero_grad = lambda *a, **k: None
    metrics = trainer.update.step(shard, trainer.cfg.learning_rate)
    return metrics["loss"], torch.cat([p.grad.float().flatten().cpu()
                                       for p in trainer.model.parameters()])


def agreement(device: str, folder: str) -> dict:
    reference = trainer_on("cpu", "float32", folder)
    batch = on_policy_batch(reference)
    ref_loss, ref = one_update(reference, *batch)
    out = {}
    for mode in ("float32", "tf32", "bf16"):
        trainer = trainer_on(device, mode, folder)
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        loss, grad = one_update(trainer, *batch)
        rel_grad = float((grad - ref).norm() / ref.norm())
        rel_loss = abs(loss - ref_loss) / max(abs(ref_loss), 0.01)  # a loss near 0 stays 0
        out[mode] = {"loss": loss, "loss_cpu": ref_loss, "loss_rel": rel_loss,
                     "grad_rel": rel_grad, "tolerance": TOLERANCE[mode],
                     "ok": max(rel_grad, rel_loss) <= TOLERANCE[mode]}
    torch.backends.cuda.matmul.allow_tf32 = True
    return out


# --- 3. throughput ------------------------------------------------------------------------------
class Ids:
    """The two ids an engine needs from a tokenizer, for a model without one."""

    def __init__(self, vocab: int):
        self.pad_token_id, self.eos_token_id = 0, vocab - 1


def qwen05b(small: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if small:
        config = Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, tie_word_embeddings=True)
    else:  # Qwen2.5-0.5B's shapes
        config = Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                             num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                             max_position_embeddings=32768, rope_theta=1e6,
                             tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generation_rate(engine, prompts, new_tokens: int, device: str) -> dict:
    """Generated tokens/s of one call, after a warm-up call of the same shape (kernels, the
    allocator, a captured step's compilation: its seconds are reported)."""
    counts, temps = [GROUP] * len(prompts), [1.0] * len(prompts)
    sync(device)
    start = time.perf_counter()
    engine.generate(prompts, counts, temps, new_tokens)
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    rollout = engine.generate(prompts, counts, temps, new_tokens)
    sync(device)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": int(rollout.completion_mask.sum()) / seconds,
            "warmup_seconds": warmup}


def generation(device: str, small: bool) -> dict:
    """bf16 weights (so the KV cache is bf16, as in a bf16 rollout): HF ``generate``, the fast
    engine's eager decode and its captured decode, at 64 and 256 concurrent sequences."""
    from explorl.rollout.engine import HFEngine
    from explorl.rollout.fast import FastEngine

    model = qwen05b(small).to(device=device, dtype=torch.bfloat16).eval()
    ids = Ids(model.config.vocab_size)
    model.generation_config.eos_token_id = ids.eos_token_id
    g = torch.Generator().manual_seed(0)
    prompt_len, new_tokens = (16, 16) if small else (64, 128)
    engines = {"hf": lambda: HFEngine(model, ids), "fast": lambda: FastEngine(model, ids),
               "captured": lambda: FastEngine(model, ids, compile_decode=True)}
    out = {}
    for concurrent in (64, 256):  # as GRPO asks: groups of 8 samples of one prompt
        prompts = torch.randint(1, ids.eos_token_id, (concurrent // GROUP, prompt_len),
                                generator=g).tolist()
        out[concurrent] = {name: generation_rate(make(), prompts, new_tokens, device)
                           for name, make in engines.items()}
    return out


def model_flops(config, rows: int, prompt_len: int, completion: int) -> float:
    """Model FLOPs of one forward and backward (3x a forward; activation recomputation is not
    counted): ``6 N T`` for the N non-embedding weights over all T tokens, ``6 h V`` per
    completion position for the LM head (it runs there only), and causal attention's
    ``6 h s^2`` per layer and row (QK^T and AV, half the square each, times 3)."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    seq = prompt_len + completion
    return (6 * layers * per_layer * rows * seq + 6 * h * config.vocab_size * rows
            * (completion + 1) + 6 * layers * h * seq * seq * rows)


def update(device: str, small: bool) -> dict:
    """Forward and backward of the log-prob update under bf16 autocast, float32 weights,
    gradient checkpointing; the optimizer step is outside the timer; median of 5 after a
    warm-up."""
    from explorl.models.policy import completion_logprobs

    model = qwen05b(small).to(device)
    g = torch.Generator().manual_seed(0)
    rows, prompt_len, completion = (8, 16, 32) if small else (64, 64, 256)
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab - 1, (rows, prompt_len), generator=g).to(device)
    tokens = torch.randint(1, vocab - 1, (rows, completion), generator=g).to(device)
    ones = torch.ones_like
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.startswith("cuda"))
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(6):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, torch.bfloat16):
            stats = completion_logprobs(model, prompt, ones(prompt), tokens, ones(tokens),
                                        torch.ones(rows, device=device), with_entropy=True)
        (-(stats.logps.exp() / stats.logps.exp().detach()).mean()).backward()
        sync(device)
        times.append(time.perf_counter() - start)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = sorted(times[1:])[len(times[1:]) // 2]
    flops = model_flops(model.config, rows, prompt_len, completion)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"params": sum(p.numel() for p in model.parameters()),
            "update_tokens_per_s": rows * (prompt_len + completion) / seconds,
            "update_seconds": seconds, "model_tflops": flops / seconds / 1e12,
            "mfu": flops / seconds / peak if peak else None,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30
            if device.startswith("cuda") else None}


def throughput(device: str, small: bool) -> dict:
    return {"generate_tokens_per_s": generation(device, small), **update(device, small)}


# --- 4. a GRPO run --------------------------------------------------------------------------------
def reward_slope(rewards: list[float]) -> tuple[float, float]:
    """The least-squares slope of the per-step mean reward against the step, and its t
    statistic (the residuals' spread estimated from the run itself: samples of one prompt are
    not independent, so no binomial formula)."""
    y = torch.tensor(rewards, dtype=torch.float64)
    x = torch.arange(len(y), dtype=torch.float64)
    x = x - x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    residual = y - y.mean() - slope * x
    se = float((residual.square().sum() / (len(y) - 2) / (x * x).sum()).sqrt())
    return slope, slope / se


def grpo_run(device: str, folder: str, small: bool) -> dict:
    from explorl import TrainConfig, Trainer

    steps, prompts = (6, 8) if small else (GRPO_STEPS, 64)  # small: only has to run
    cfg = TrainConfig(device=device, max_steps=steps, output_dir=f"{folder}/grpo",
                      prompts_per_step=prompts, eval_size=40 if small else 500, progress=False,
                      plots=False, save_every=steps)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    summary = trainer.train()
    seconds = time.perf_counter() - start
    text = Path(cfg.output_dir, "metrics.jsonl").read_text()
    rewards = [json.loads(line)["reward/mean"] for line in text.splitlines()]
    slope, t = reward_slope(rewards)
    window = min(10, steps // 2)
    return {"steps": steps, "seconds": seconds,
            "reward_first10": sum(rewards[:window]) / window,
            "reward_last10": sum(rewards[-window:]) / window,
            "slope_per_100_steps": 100 * slope, "slope_t": t,
            "accuracy_before": summary["before"]["accuracy"],
            "accuracy_after": summary["after"]["accuracy"],
            "ok": small or t >= SLOPE_T}


# --- 5-7. pass@k, HeRL + E3, an interrupted run -------------------------------------------------
def pass_k(device: str, folder: str) -> dict:
    from explorl import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(device=device, output_dir=f"{folder}/pass_k", eval_size=64,
                                  progress=False, plots=False))
    result = trainer.evaluate("before", pass_k=[1, 4])
    return {**result, "ok": 0 < result["pass_at_k"]["4"] <= 1
            and result["pass_at_k"]["1"] <= result["pass_at_k"]["4"]}


def herl_e3(device: str, folder: str) -> dict:
    from explorl import TrainConfig, Trainer

    cfg = TrainConfig(device=device, method="herl+e3", dataset="rubric", max_steps=4,
                      prompts_per_step=8, eval_size=16, output_dir=f"{folder}/herl_e3",
                      progress=False, plots=False, save_every=0)
    summary = Trainer(cfg).train()
    rows = [json.loads(line) for line in
            Path(cfg.output_dir, "metrics.jsonl").read_text().splitlines()]
    distilled = sum(r.get("herl/distilled", 0) for r in rows)
    finite = all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    return {"steps": summary["steps"], "distilled": distilled,
            "temperature": rows[-1].get("temperature"), "ok": finite and distilled > 0}


def resume(device: str, folder: str) -> dict:
    from explorl import TrainConfig, Trainer

    def run(name: str, *max_steps: int):
        for steps in max_steps:  # a 2-step run leaves checkpoint-2; the 4-step one resumes it
            trainer = Trainer(TrainConfig(device=device, max_steps=steps, save_every=2,
                                          warmup_steps=2, prompts_per_step=8, num_generations=4,
                                          eval_size=8, output_dir=f"{folder}/{name}",
                                          progress=False, plots=False))
            trainer.train()
        return dict(trainer.model.named_parameters())

    straight, resumed = run("straight", 4), run("resumed", 2, 4)
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    return {"tensors": len(straight), "differ": differ[:5], "ok": not differ}


def table(report: dict) -> str:
    lines = [f"device: {report['device']}", "| check | result |", "|---|---|"]
    for name in SECTIONS:
        r = report.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | FAILED: {r['error'].strip().splitlines()[-1]} |")
        elif name == "tests":
            lines.append(f"| gpu tests | {r['summary']} |")
        elif name == "agreement":
            lines += [f"| agreement {mode} | loss rel {a['loss_rel']:.1e}, grad rel "
                      f"{a['grad_rel']:.1e} (tol {a['tolerance']:.2g}) "
                      f"{'ok' if a['ok'] else 'FAIL'} |" for mode, a in r.items()
                      if isinstance(a, dict)]
        elif name == "throughput":
            for n, rates in r["generate_tokens_per_s"].items():
                hf, fast, captured = (rates[k]["tokens_per_s"] for k in ("hf", "fast",
                                                                          "captured"))
                lines.append(f"| bf16 generate tokens/s at {n} | hf {hf:.0f}, fast {fast:.0f} "
                             f"({fast / hf:.2f}x), captured {captured:.0f} "
                             f"({captured / hf:.2f}x) |")
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
            memory = f"{r['peak_memory_gb']:.1f} GB" if r["peak_memory_gb"] else "n/a"
            lines.append(f"| update | {r['update_tokens_per_s']:.0f} tokens/s, MFU {mfu}, "
                         f"peak {memory} |")
        elif name == "grpo":
            lines.append(f"| GRPO {r['steps']} steps | reward {r['reward_first10']:.3f} -> "
                         f"{r['reward_last10']:.3f} (slope t {r['slope_t']:.1f}), accuracy "
                         f"{r['accuracy_before']:.3f} -> "
                         f"{r['accuracy_after']:.3f}, {r['seconds']:.0f} s "
                         f"{'ok' if r['ok'] else 'FAIL'} |")
        else:
            shown = {k: v for k, v in r.items() if k not in ("ok", "seconds")}
            lines.append(f"| {name} | {json.dumps(shown)} {'ok' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


# throughput last: its compilations take the longest, and what ran before is already written
SECTIONS = ("tests", "agreement", "grpo", "pass_k", "herl_e3", "resume", "throughput")


def passed(result: dict) -> bool:
    if "error" in result:
        return False
    if "ok" in result:
        return bool(result["ok"])
    return all(passed(v) for v in result.values() if isinstance(v, dict) and "ok" in v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check the script")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs/gpu_check"),
                        help="folder for gpu_check.json and gpu_check.md (default: $OUT)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": name, "torch": torch.__version__, "small": args.small}
    started = time.perf_counter()
    checks = {"tests": lambda f: run_gpu_tests(), "agreement": lambda f: agreement(args.device, f),
              "throughput": lambda f: throughput(args.device, args.small),
              "grpo": lambda f: grpo_run(args.device, f, args.small),
              "pass_k": lambda f: pass_k(args.device, f),
              "herl_e3": lambda f: herl_e3(args.device, f),
              "resume": lambda f: resume(args.device, f)}
    with tempfile.TemporaryDirectory() as folder:
        for section in args.only:
            start = time.perf_counter()
            try:
                result = checks[section](folder)
            except Exception:  # recorded, and the next section still runs
                result = {"error": traceback.format_exc()[-4000:]}
            result["seconds"] = round(time.perf_counter() - start, 1)
            report[section] = result
            report["seconds"] = round(time.perf_counter() - started, 1)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
            print(f"{section}: {'ok' if passed(result) else 'FAILED'} "
                  f"({result['seconds']} s)", flush=True)
    text = table(report)
    print(text)
    (out / "gpu_check.md").write_text(text + "\n")
    sys.exit(0 if all(passed(report[s]) for s in args.only) else 1)


if __name__ == "__main__":
    main()

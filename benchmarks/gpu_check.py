"""The GPU check: everything explorl claims about CUDA, in one run of a few minutes.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --small            # the script itself, on a CPU

Uses only torch, transformers, accelerate and pytest; models are the shipped tiny one and
randomly initialised ones built from a config in code; nothing is downloaded.

1. ``tests``: the tests marked ``gpu`` (device placement of every tensor of a GRPO, HeRL + E3 and
   PPO step; a short bf16 run).
2. ``agreement``: loss and whole gradient of one update of the tiny model on its own samples
   (policy loss, KL to the reference, entropy bonus, micro-batches) on the device against the
   CPU in float32. Tolerances, relative to the loss and to the gradient's norm: float32 1e-4
   (summation order; advantages of both signs cancel), TF32 5e-3 (inputs rounded to a 10-bit
   mantissa, unit roundoff 4.9e-4, times that cancellation), bf16 autocast 1e-1 (8-bit
   mantissa, unit roundoff 3.9e-3, likewise; the bound the CPU test of bf16 uses).
3. ``throughput``: a random model of Qwen2.5-0.5B's architecture (hidden 896, 24 layers, vocab
   151,936) under bf16 autocast: generated tokens/s of ``model.generate`` (HFEngine) and of
   FastEngine at 64 and 256 concurrent sequences, 8 samples of each 64-token prompt as GRPO
   asks, 128 new tokens (a random model does not stop early, so both decode the same number of
   tokens); update tokens/s, model
   FLOP utilisation (6 x parameters x tokens over the GPU's dense bf16 peak) and peak memory.
4. ``grpo``: 50 steps of the embedded default on the device with 64 prompts a step (512
   samples: the mean reward of 10 steps has a standard error near 0.007); the mean reward of
   the last 10 steps must beat that of the first 10 by 0.02 (on the CPU: 0.482 -> 0.520).

Prints one table and writes it, with the device's name, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
GROUP = 8  # samples per prompt in the throughput test
TOLERANCE = {"float32": 1e-4, "tf32": 5e-3, "bf16": 1e-1}


def run_gpu_tests() -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                          "no:cacheprovider", "tests/test_devices.py"],
                         cwd=ROOT, capture_output=True, text=True)
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


def generation_rate(engine, prompts, new_tokens: int, device: str) -> float:
    engine.generate(prompts[:2], [GROUP] * 2, [1.0] * 2, 4)  # warm-up: kernels, allocator
    sync(device)
    start = time.perf_counter()
    rollout = engine.generate(prompts, [GROUP] * len(prompts), [1.0] * len(prompts), new_tokens)
    sync(device)
    return int(rollout.completion_mask.sum()) / (time.perf_counter() - start)


def throughput(device: str, small: bool) -> dict:
    from explorl.models.policy import completion_logprobs
    from explorl.rollout.engine import HFEngine
    from explorl.rollout.fast import FastEngine

    model = qwen05b(small).to(device)
    params = sum(p.numel() for p in model.parameters())
    ids = Ids(model.config.vocab_size)
    model.generation_config.eos_token_id = ids.eos_token_id
    g = torch.Generator().manual_seed(0)
    prompt_len, new_tokens = (16, 16) if small else (64, 128)
    out = {"params": params, "generate_tokens_per_s": {}}
    autocast = torch.autocast(torch.device(device).type, torch.bfloat16)
    for concurrent in (64, 256):  # as GRPO asks: groups of 8 samples of one prompt
        prompts = torch.randint(1, ids.eos_token_id, (concurrent // GROUP, prompt_len),
                                generator=g).tolist()
        with autocast:
            out["generate_tokens_per_s"][concurrent] = {
                name: generation_rate(engine(model, ids), prompts, new_tokens, device)
                for name, engine in (("hf", HFEngine), ("fast", FastEngine))}
    rows, completion = (8, 32) if small else (64, 256)
    prompt = torch.randint(1, ids.eos_token_id, (rows, prompt_len), generator=g).to(device)
    tokens = torch.randint(1, ids.eos_token_id, (rows, completion), generator=g).to(device)
    ones = torch.ones_like
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.startswith("cuda"))
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        with autocast:
            stats = completion_logprobs(model, prompt, ones(prompt), tokens, ones(tokens),
                                        torch.ones(rows, device=device), with_entropy=True)
        (-(stats.logps.exp() / stats.logps.exp().detach()).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = min(times[1:])
    rate = rows * (prompt_len + completion) / seconds
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    out.update(update_tokens_per_s=rate, update_seconds=seconds,
               mfu=6 * params * rate / peak if peak else None,
               peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30
               if device.startswith("cuda") else None)
    return out


# --- 4. a GRPO run --------------------------------------------------------------------------------
def grpo_run(device: str, folder: str, steps: int) -> dict:
    from explorl import TrainConfig, Trainer

    cfg = TrainConfig(device=device, max_steps=steps, output_dir=f"{folder}/grpo",
                      prompts_per_step=64, eval_size=500, progress=False, plots=False,
                      save_every=steps)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    summary = trainer.train()
    seconds = time.perf_counter() - start
    text = Path(cfg.output_dir, "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    first = sum(r["reward/mean"] for r in rows[:10]) / 10
    last = sum(r["reward/mean"] for r in rows[-10:]) / 10
    return {"steps": steps, "seconds": seconds, "reward_first10": first, "reward_last10": last,
            "accuracy_before": summary["before"]["accuracy"],
            "accuracy_after": summary["after"]["accuracy"], "ok": last > first + 0.02}


def table(report: dict) -> str:
    lines = [f"device: {report['device']}", "| check | result |", "|---|---|"]
    lines.append(f"| gpu tests | {report['tests']['summary']} |")
    for mode, a in report["agreement"].items():
        lines.append(f"| agreement {mode} | loss rel {a['loss_rel']:.1e}, grad rel "
                     f"{a['grad_rel']:.1e} (tol {a['tolerance']:.0e}) "
                     f"{'ok' if a['ok'] else 'FAIL'} |")
    t = report["throughput"]
    for n, rates in t["generate_tokens_per_s"].items():
        lines.append(f"| generate tokens/s at {n} | hf {rates['hf']:.0f}, fast {rates['fast']:.0f}"
                     f" ({rates['fast'] / rates['hf']:.2f}x) |")
    mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] else "n/a"
    memory = f"{t['peak_memory_gb']:.1f} GB" if t["peak_memory_gb"] else "n/a"
    lines.append(f"| update | {t['update_tokens_per_s']:.0f} tokens/s, MFU {mfu}, peak {memory} |")
    r = report["grpo"]
    lines.append(f"| GRPO {r['steps']} steps | reward {r['reward_first10']:.3f} -> "
                 f"{r['reward_last10']:.3f}, accuracy {r['accuracy_before']:.3f} -> "
                 f"{r['accuracy_after']:.3f}, {r['seconds']:.0f} s {'ok' if r['ok'] else 'FAIL'}"
                 " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check the script")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_check.json"))
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"device": name, "torch": torch.__version__, "started": time.time()}
    with tempfile.TemporaryDirectory() as folder:
        report["tests"] = run_gpu_tests()
        print("tests:", report["tests"]["summary"], flush=True)
        report["agreement"] = agreement(args.device, folder)
        print("agreement:", json.dumps(report["agreement"]), flush=True)
        report["throughput"] = throughput(args.device, args.small)
        print("throughput:", json.dumps(report["throughput"]), flush=True)
        report["grpo"] = grpo_run(args.device, folder, 50)
    report["seconds"] = time.time() - report.pop("started")
    print(table(report))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    ok = report["tests"]["ok"] and all(a["ok"] for a in report["agreement"].values()) \
        and report["grpo"]["ok"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

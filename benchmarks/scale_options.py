"""Peak memory and step time of the update options and the distributed engines, side by side.

A randomly initialised Qwen2-architecture model (8 layers, width 512, 34M parameters, the
shipped tokenizer) trains 3 GRPO steps in each variant: float32; gradient checkpointing; bf16
autocast; DDP, FSDP and DeepSpeed ZeRO-2 (when installed) over 2 processes (the shipped CPU
accelerate configs).
Every variant sees the same global batch (8 prompts x 4 samples x 32 tokens). Each runs in a
fresh process tree; its peak resident memory is the largest process's peak (``ru_maxrss``)
over the 3 steps, its step time the first process's mean over steps 2-3. glibc's mmap threshold
is fixed at 1 MB for every variant (see ``ALLOCATOR``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_options.py

Writes ``benchmarks/results/scale_options.json``. One thread per process: the distributed
variants use 2 cores, the others 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
TRAIN = ["prompts_per_step=8", "num_generations=4", "max_completion_length=32", "eval_size=8",
         "task_train_size=200", "progress=false"]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
# glibc raises its mmap threshold as large blocks are freed, then keeps later freed blocks in
# the heap: the weights FSDP gathers for a rollout would stay resident after they are freed.
# A fixed threshold returns such blocks to the system, for every variant alike.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
VARIANTS = {
    "float32": [],
    "gradient_checkpointing": ["gradient_checkpointing=true"],
    "bf16": ["bf16=true"],
    "ddp_2proc": ["@ddp_cpu"],
    "fsdp_2proc": ["@fsdp_cpu"],
}
if importlib.util.find_spec("deepspeed"):
    VARIANTS["zero2_2proc"] = ["@deepspeed_zero2_cpu"]


def build_model(folder: Path) -> int:
    """A random 34M-parameter Qwen2 with the shipped tokenizer; returns the parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = ROOT / "src/explorl/assets/tiny"
    config = AutoConfig.from_pretrained(tiny)
    config.update(dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                       layer_types=["full_attention"] * 8))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tiny / name, folder / name)
    return sum(p.numel() for p in model.parameters())


def worker(model: str, out: str, *overrides: str) -> None:
    """Three training steps in this process (one of several under a launcher); writes its
    peak resident memory and step times. No checkpoint or evaluation: those gather the full
    state on the first process and would hide what training itself holds."""
    import resource

    from explorl import Trainer
    from explorl.config import load_config

    trainer = Trainer(load_config(None, [*TRAIN, *overrides, f"model={model}",
                                         f"output_dir={out}"]))
    times = [trainer.step(step) for step in range(1, STEPS + 1)][1:]
    result = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for key in ("step", "generate", "update"):
        result[f"{key}_seconds"] = sum(t[f"time/{key}"] for t in times) / len(times)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{trainer.dist.rank}.json").write_text(json.dumps(result))


def run(name: str, args: list[str], model: Path, out: Path) -> dict:
    engine = [a[1:] for a in args if a.startswith("@")]
    keys = [a for a in args if not a.startswith("@")]
    launcher = ([*LAUNCH, str(ROOT / f"configs/accelerate/{engine[0]}.yaml")] if engine
                else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT / "src"), **ALLOCATOR}
    subprocess.run([*launcher, __file__, "--worker", str(model), str(out / name), *keys],
                   env=env, check=True, capture_output=True)
    ranks = [json.loads(f.read_text()) for f in sorted((out / name).glob("rank*.json"))]
    # the largest process's memory; the first process's times (the others wait for it)
    return {"processes": len(ranks),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in ranks)),
            **{k: round(v, 2) for k, v in ranks[0].items() if k.endswith("_seconds")}}


def idle_rss_mb() -> int:
    """Peak memory of a process that only imports explorl and loads nothing: the floor."""
    probe = ("import resource, explorl.trainer; "
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return round(int(out.stdout.split()[-1]) / 1024)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        params = build_model(model)
        results = {name: run(name, args, model, Path(tmp)) for name, args in VARIANTS.items()}
    base = results["float32"]
    for r in results.values():
        r["memory_vs_float32"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 2)
        r["time_vs_float32"] = round(r["step_seconds"] / base["step_seconds"], 2)
    report = {"parameters": params, "batch": "8 prompts x 4 samples x 32 tokens",
              "allocator": ALLOCATOR,
              "idle_process_mb": idle_rss_mb(),
              "variants": results}
    out = ROOT / "benchmarks/results/scale_options.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:])
    else:
        main()

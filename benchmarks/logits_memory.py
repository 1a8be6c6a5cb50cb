"""Peak memory of one policy update with the LM head chunked (``logits_chunk_size``) and not.

A randomly initialised Qwen2 of hidden 256 with Qwen2's vocabulary of 151,936 tokens, 16 rows x
(32 prompt + 256 completion) tokens, float32 on the CPU: the update's logits alone are
16 x 256 x 151,936 x 4 bytes = 2.5 GB. Each variant runs in its own subprocess (a clean heap):
one forward pass, the DAPO surrogate plus an entropy bonus (so the entropy's gradient goes
through the chunks too), one backward pass. Peak RSS is ``ru_maxrss``; the growth is over the
RSS once the model and batch exist. The gradients of the two variants are compared.

    .venv/bin/python benchmarks/logits_memory.py

Writes ``benchmarks/results/logits_memory.json``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
ROWS, PROMPT, COMPLETION, VOCAB = 16, 32, 256, 151_936
CHUNK = 512


def model_and_batch():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=768,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).train()
    prompt = torch.randint(0, VOCAB, (ROWS, PROMPT))
    completion = torch.randint(0, VOCAB, (ROWS, COMPLETION))
    completion_mask = torch.ones(ROWS, COMPLETION, dtype=torch.long)
    for i in range(ROWS):  # completions of different lengths, as sampling gives
        completion_mask[i, COMPLETION - 8 * i:] = 0 if i else 1
    advantages = torch.randn(ROWS, 1)
    return model, (prompt, torch.ones_like(prompt), completion, completion_mask), advantages


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_update(chunk: int, grads_to: str) -> dict:
    from explorl.models.policy import completion_logprobs

    model, batch, advantages = model_and_batch()
    base = rss_mb()
    start = time.perf_counter()
    stats = completion_logprobs(model, *batch, torch.ones(ROWS), with_entropy="grad",
                                chunk_size=chunk)
    mask = batch[3].float()
    ratio = torch.exp(stats.logps - stats.logps.detach())
    loss = (-(ratio * advantages) - 0.01 * stats.entropy) * mask
    (loss.sum() / mask.sum()).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save({n: p.grad for n, p in model.named_parameters()}, grads_to)
    return {"chunk": chunk, "peak_rss_mb": peak, "base_rss_mb": base,
            "growth_mb": peak - base, "seconds": seconds}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(one_update(int(sys.argv[2]), sys.argv[3])))
        return
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, chunk in (("chunked", CHUNK), ("unchunked", 0)):
            path = f"{tmp}/{name}.pt"
            out = subprocess.run([sys.executable, __file__, "--one", str(chunk), path],
                                 check=True, capture_output=True, text=True)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            grads[name] = torch.load(path)
    # relative to the largest gradient entry of each tensor: float32 sums in another order
    rel = max(float((grads["chunked"][n] - grads["unchunked"][n]).abs().max()
                    / grads["unchunked"][n].abs().max()) for n in grads["chunked"])
    report = {**results, "peak_ratio": results["chunked"]["peak_rss_mb"]
              / results["unchunked"]["peak_rss_mb"],
              "growth_ratio": results["chunked"]["growth_mb"] / results["unchunked"]["growth_mb"],
              "max_relative_grad_difference": rel,
              "setup": f"Qwen2 hidden 256, 2 layers, vocab {VOCAB}, {ROWS} rows x {PROMPT}+"
                       f"{COMPLETION} tokens, float32, CPU, torch {torch.__version__}"}
    print(json.dumps(report, indent=1))
    out = ROOT / "benchmarks" / "results" / "logits_memory.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

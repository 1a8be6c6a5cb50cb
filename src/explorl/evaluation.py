"""Held-out evaluation: greedy accuracy, and unbiased pass@k / avg@k from n samples per prompt.

pass@k uses the Codex estimator (Chen et al. 2021): with n samples of which c are correct,
``pass@k = 1 - C(n - c, k) / C(n, k)``, the chance that k samples drawn without replacement
contain a correct one. avg@n is the mean correctness of the n samples (an estimate of pass@1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from explorl.data.loaders import columns_of
from explorl.data.prompts import PromptCodec
from explorl.rewards.base import compute_rewards
from explorl.rollout.engine import HFEngine, RolloutEngine


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples with c correct (requires k <= n)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k / i), numerically stable form of the binomial ratio
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _correct(reward_fn, rows: list[dict], prompts: list, texts: list[str], ids: list[list[int]],
             threshold: float, codec: PromptCodec, grades: list | None = None,
             timeout: float | None = None) -> list[bool]:
    """Correct samples (NaN, unknown, counts as wrong); rubric grades go into ``grades``."""
    columns = columns_of(rows)
    completions = [codec.completion(p, t) for p, t in zip(prompts, texts)]
    rewards = compute_rewards([reward_fn], [1.0], prompts, completions, ids, columns, timeout)
    if grades is not None and rewards.grades is not None:
        grades += rewards.grades
    return [bool(v >= threshold) for v in rewards.total.tolist()]


@torch.no_grad()
def evaluate(engine: RolloutEngine, tokenizer, rows: list[dict],
             reward_fn: tuple[str, Callable], max_new_tokens: int,
             pass_k: tuple[int, ...] = (), temperature: float = 1.0, threshold: float = 1.0,
             codec: PromptCodec | None = None, batch_size: int = 256,
             reward_timeout: float | None = None) -> dict:
    """Greedy accuracy (overall and per ``level`` when rows have one), plus pass@k and avg@n
    from ``n = max(pass_k)`` samples per prompt at ``temperature`` when ``pass_k`` is given,
    sampled ``batch_size`` rows at a time by ``engine``."""
    codec = codec or PromptCodec(tokenizer)
    prompts = [r["prompt"] for r in rows]
    encoded = [codec.encode(p) for p in prompts]
    ids = engine.greedy(encoded, max_new_tokens)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    grades: list = []
    ok = _correct(reward_fn, rows, prompts, texts, ids, threshold, codec, grades, reward_timeout)
    result: dict = {"accuracy": float(np.mean(ok)), "n": len(rows)}
    if grades:  # rubric rewards: the weighted share of criteria met, too
        result["dense"] = float(np.mean([g.dense if g else 0.0 for g in grades]))
    if "level" in rows[0]:
        by_level: dict[str, list[bool]] = defaultdict(list)
        for r, c in zip(rows, ok):
            by_level[str(r["level"])].append(c)
        result["by_level"] = {k: float(np.mean(v)) for k, v in sorted(by_level.items())}
    if pass_k:
        n = max(pass_k)
        counts = np.zeros(len(rows), dtype=int)
        step = max(1, batch_size // n)
        for s in range(0, len(rows), step):
            chunk = slice(s, s + step)
            m = len(encoded[chunk])
            out = engine.generate(encoded[chunk], [n] * m, [temperature] * m, max_new_tokens)
            sample_ids = out.completions()
            sample_texts = tokenizer.batch_decode(sample_ids, skip_special_tokens=True)
            rep_rows = [rows[s + int(g)] for g in out.group_ids]
            rep_prompts = [r["prompt"] for r in rep_rows]
            good = _correct(reward_fn, rep_rows, rep_prompts, sample_texts, sample_ids,
                            threshold, codec, timeout=reward_timeout)
            np.add.at(counts, s + out.group_ids.cpu().numpy(), np.array(good, dtype=int))
        result["pass_at_k"] = {str(k): float(np.mean([pass_at_k(n, int(c), k) for c in counts]))
                               for k in sorted(pass_k)}
        result[f"avg_at_{n}"] = float(np.mean(counts / n))
        result["temperature"] = temperature
    return result


def evaluate_rows(model, tokenizer, rows, max_new_tokens: int = 8, pass_k=(), **kw) -> dict:
    """Evaluation of a model on built-in arithmetic rows with exact-match reward."""
    from explorl.data.arithmetic import exact_match_reward

    return evaluate(HFEngine(model, tokenizer), tokenizer, rows,
                    ("arithmetic", exact_match_reward), max_new_tokens, pass_k=pass_k, **kw)

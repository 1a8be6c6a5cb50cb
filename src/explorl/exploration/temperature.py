"""E3 entropy-keeping temperature: raise the sampling temperature as the policy's entropy falls.

Liao et al. (EMNLP 2025). After each update, with H the token-mean entropy of the step's
response tokens under ``softmax(logits / T)`` and H* the target:

    T <- T * (1 + T * ln(H* / H) / (ln V + ln ln V)),   V = vocabulary size

Falling entropy raises T, rising entropy lowers it. Ours beyond the paper: the target is the mean
entropy of the first ``target_steps`` steps (one batch is too noisy) unless given; the measured
entropy can be smoothed (EMA); T stays within ``[t_min, t_max]``; and the target can decay on a
cosine to ``anneal_ratio * H*`` over the last ``anneal_fraction`` of training (the paper: 0.4 and
0.9).
"""

from __future__ import annotations

import math


def next_temperature(t: float, entropy: float, target: float, vocab_size: int) -> float:
    """The paper's update, unbounded."""
    scale = math.log(vocab_size) + math.log(math.log(vocab_size))
    return t * (1.0 + t * math.log(target / entropy) / scale)


def annealed_target(target: float, step: int, max_steps: int, fraction: float,
                    ratio: float) -> float:
    """``target`` until ``(1 - fraction) * max_steps``, then a cosine down to ``ratio * target``
    at ``max_steps``."""
    start = (1.0 - fraction) * max_steps
    if fraction <= 0 or step <= start:
        return target
    progress = min(1.0, (step - start) / (max_steps - start))
    return target * (ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class EntropyKeeper:
    """Holds the temperature for the next rollouts; :meth:`observe` after every update."""

    def __init__(self, temperature: float, vocab_size: int, max_steps: int, *,
                 target: float | None = None, target_steps: int = 10, ema: float = 0.0,
                 t_min: float = 0.5, t_max: float = 2.0, anneal_fraction: float = 0.0,
                 anneal_ratio: float = 0.9):
        self.temperature = temperature
        self.vocab_size, self.max_steps = vocab_size, max_steps
        self.target, self.target_steps, self.ema = target, target_steps, ema
        self.t_min, self.t_max = t_min, t_max
        self.anneal_fraction, self.anneal_ratio = anneal_fraction, anneal_ratio
        self.warmup: list[float] = []  # entropies of the first steps, while the target forms
        self.smoothed: float | None = None

    @classmethod
    def from_config(cls, cfg, vocab_size: int) -> EntropyKeeper:
        """From a :class:`explorl.config.TrainConfig` (``temperature`` is where it starts,
        ``entropy.target`` what it holds)."""
        e3 = cfg.e3
        return cls(cfg.temperature, vocab_size, cfg.max_steps, target=cfg.entropy.target,
                   target_steps=cfg.entropy.target_steps, ema=e3.entropy_ema,
                   t_min=e3.temperature_min, t_max=e3.temperature_max,
                   anneal_fraction=e3.anneal_fraction, anneal_ratio=e3.anneal_ratio)

    def current_target(self, step: int) -> float | None:
        if self.target is None:
            return None
        return annealed_target(self.target, step, self.max_steps, self.anneal_fraction,
                               self.anneal_ratio)

    def observe(self, step: int, entropy: float) -> float:
        """Record this step's entropy; return the temperature for the next step's rollouts."""
        if not math.isfinite(entropy) or entropy <= 0:
            return self.temperature  # nothing to learn from an empty or broken measurement
        if self.target is None:
            self.warmup.append(entropy)
            if len(self.warmup) >= self.target_steps:
                self.target = sum(self.warmup) / len(self.warmup)
                self.smoothed = self.target
            return self.temperature
        self.smoothed = entropy if self.smoothed is None else (
            self.ema * self.smoothed + (1.0 - self.ema) * entropy)
        t = next_temperature(self.temperature, self.smoothed, self.current_target(step),
                             self.vocab_size)
        self.temperature = min(self.t_max, max(self.t_min, t))
        return self.temperature

    def state(self) -> dict:
        return {"temperature": self.temperature, "target": self.target,
                "warmup": self.warmup, "smoothed": self.smoothed}

    def load(self, state: dict) -> None:
        self.temperature = state["temperature"]
        self.target = state["target"]
        self.warmup = list(state["warmup"])
        self.smoothed = state["smoothed"]

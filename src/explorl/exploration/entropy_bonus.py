"""An entropy bonus whose weight adapts to hold a target entropy (``entropy.adaptive``).

After each update, with H the token-mean entropy of the step's completion tokens and H* the
target, the coefficient of the ``-c * H`` term in the loss moves by a fixed step towards holding
H at H* (Skywork-OR1's adaptive entropy control, He et al. 2025):

    c <- clip(c + step, 0, c_max)   if H < H*
    c <- clip(c - step, 0, c_max)   if H > H*

The target is the mean entropy of the first ``target_steps`` steps unless given, as for E3's
temperature (:mod:`explorl.exploration.temperature`), which holds entropy without touching the
loss.
"""

from __future__ import annotations

import math


def next_entropy_coef(coef: float, entropy: float, target: float, step: float,
                      max_coef: float) -> float:
    """One step of the controller; an entropy exactly at the target leaves ``coef`` alone."""
    if entropy < target:
        coef += step
    elif entropy > target:
        coef -= step
    return min(max_coef, max(0.0, coef))


class AdaptiveEntropyBonus:
    """Holds the entropy coefficient of the next update; :meth:`observe` after every update."""

    def __init__(self, coef: float, step: float, max_coef: float, target: float | None = None,
                 target_steps: int = 10):
        self.coef, self.step, self.max_coef = coef, step, max_coef
        self.target, self.target_steps = target, target_steps
        self.warmup: list[float] = []  # entropies of the first steps, while the target forms

    @classmethod
    def from_config(cls, cfg) -> AdaptiveEntropyBonus:
        """From a :class:`explorl.config.TrainConfig`'s ``entropy`` section."""
        e = cfg.entropy
        return cls(e.coef, e.coef_step, e.coef_max, e.target, e.target_steps)

    def observe(self, entropy: float) -> float:
        """Record this step's entropy; return the coefficient for the next update."""
        if not math.isfinite(entropy) or entropy <= 0:
            return self.coef  # an empty or broken measurement says nothing
        if self.target is None:
            self.warmup.append(entropy)
            if len(self.warmup) >= self.target_steps:
                self.target = sum(self.warmup) / len(self.warmup)
            return self.coef
        self.coef = next_entropy_coef(self.coef, entropy, self.target, self.step, self.max_coef)
        return self.coef

    def state(self) -> dict:
        return {"coef": self.coef, "target": self.target, "warmup": self.warmup}

    def load(self, state: dict) -> None:
        self.coef, self.target, self.warmup = state["coef"], state["target"], list(state["warmup"])

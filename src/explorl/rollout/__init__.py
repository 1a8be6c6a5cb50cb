"""Rollout engines: generate completions for prompts, any number per prompt, any temperature.

``build_engine`` picks the one a config names; the engines themselves know nothing of configs.
"""

from explorl.batch import Rollout
from explorl.rollout.engine import HFEngine, RolloutEngine


def build_engine(cfg, model, tokenizer) -> RolloutEngine:
    """The engine ``cfg.engine`` names, at ``cfg.top_p``."""
    if cfg.engine == "fast":
        from explorl.rollout.fast import FastEngine

        return FastEngine(model, tokenizer, top_p=cfg.top_p, compile_decode=cfg.compile_decode)
    return HFEngine(model, tokenizer, top_p=cfg.top_p)


__all__ = ["HFEngine", "Rollout", "RolloutEngine", "build_engine"]

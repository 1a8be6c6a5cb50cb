"""Rollout engines: generate completions for prompts, any number per prompt, any temperature."""

from explorl.rollout.engine import HFEngine, Rollout, RolloutEngine

__all__ = ["HFEngine", "Rollout", "RolloutEngine"]

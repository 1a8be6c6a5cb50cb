"""Rollout engines: generate completions for prompts, any number per prompt, any temperature.

``build_engine`` picks the one a config names; the engines themselves know nothing of configs.
"""

from explorl.batch import Rollout
from explorl.rollout.engine import HFEngine, RolloutEngine


def build_engine(cfg, model, tokenizer) -> RolloutEngine:
    """The engine ``cfg.engine`` names, at ``cfg.top_p`` (vLLM's with its ``vllm_*`` fields)."""
    if cfg.engine == "fast":
        from explorl.rollout.fast import FastEngine

        return FastEngine(model, tokenizer, top_p=cfg.top_p, compile_decode=cfg.compile_decode)
    if cfg.engine == "vllm":
        from explorl.rollout.vllm import VLLMEngine

        length = cfg.vllm_max_model_length or min(
            cfg.max_prompt_length + cfg.max_completion_length,
            getattr(model.config, "max_position_embeddings", None) or 2**31)
        return VLLMEngine(model, tokenizer, top_p=cfg.top_p,
                          dtype="bfloat16" if cfg.bf16 else None, max_model_length=length,
                          kv_cache_gb=cfg.vllm_kv_cache_gb,
                          gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                          seed=cfg.seed, name=f"model={cfg.model}")
    return HFEngine(model, tokenizer, top_p=cfg.top_p)


__all__ = ["HFEngine", "Rollout", "RolloutEngine", "build_engine"]

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


def check_sampling_logps(cfg, engine) -> None:
    """One line when the mismatch correction is on and the engine gives no sampling
    log-probs to correct with."""
    from explorl.errors import UserError

    if cfg.vllm_importance_sampling_correction and \
            not getattr(engine, "gives_sampling_logps", False):
        raise UserError("vllm_importance_sampling_correction: the engine gives no sampling "
                        "log-probs (Rollout.sampling_logps, gives_sampling_logps=True); return "
                        "them or set it false")


__all__ = ["HFEngine", "Rollout", "RolloutEngine", "build_engine", "check_sampling_logps"]

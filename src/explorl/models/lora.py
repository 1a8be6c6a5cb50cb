"""LoRA adapters with PEFT: train a few low-rank matrices instead of the whole model.

:func:`apply_lora` wraps a causal LM so that only the adapters require gradients; the wrapped
model keeps the ``generate`` / ``forward`` / ``config`` interface the trainer uses. Adapters are
saved as ``adapter_model.safetensors`` plus ``adapter_config.json`` (PEFT's own layout, no
pickle). For ``final/``, :func:`merge_lora` folds the adapters into the base weights so the
result loads with plain transformers. With adapters switched off (:func:`adapters_disabled`) the
model is its base, which serves as the KL reference without a second copy in memory.

Install: ``pip install peft`` (``EXTRAS=peft bash scripts/setup.sh``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from explorl.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("lora_r: LoRA needs the peft package (pip install peft, or "
                        "EXTRAS=peft bash scripts/setup.sh)") from None
    return peft


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               target_modules: str | list[str] = "all-linear"):
    """Wrap ``model`` with fresh LoRA adapters of rank ``r`` (default 16), scale
    ``alpha / r`` (alpha default 32), ``dropout`` on the adapter input (default 0.0: RL keeps
    dropout off so log-probs match the sampling pass) on ``target_modules`` (default
    ``all-linear``: every linear layer but the output head; or names like ``["q_proj",
    "v_proj"]``). The adapters' B matrices start at zero, so the wrapped model computes exactly
    what ``model`` did. Returns the PEFT model; only adapter parameters require gradients."""
    peft = _peft()
    if r <= 0:
        raise UserError(f"lora_r: must be a positive rank, got {r}")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                             target_modules=target_modules, task_type="CAUSAL_LM", bias="none")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. no module matches target_modules
        raise UserError(f"lora_target_modules: {str(e).splitlines()[0]}") from None


def is_lora(model) -> bool:
    """Whether ``model`` carries PEFT adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def trainable_parameters(model) -> list:
    """The parameters that require gradients: what the optimizer should get."""
    return [p for p in model.parameters() if p.requires_grad]


def adapters_disabled(model):
    """Context manager under which a LoRA model computes as its base model (a no-op for a
    model without adapters)."""
    return model.disable_adapter() if is_lora(model) else contextlib.nullcontext()


def save_adapter(model, folder: str | Path) -> Path:
    """Write the adapters to ``folder`` as safetensors plus ``adapter_config.json``."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def load_adapter_weights(model, folder: str | Path) -> None:
    """Load saved adapter weights into a model already wrapped by :func:`apply_lora` with the
    same settings (resuming a checkpoint)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, state)
    unfit = [k for k in result.unexpected_keys if "lora_" in k]
    if unfit:
        raise ValueError(f"{folder}: adapter weights do not fit the model ({unfit[0]}, ...)")


def load_lora(base_model, folder: str | Path, trainable: bool = False):
    """``base_model`` wrapped with the adapters saved in ``folder`` (frozen unless
    ``trainable``)."""
    return _peft().PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)


def merge_lora(model):
    """The base model with the adapters folded into its weights, ready for ``save_pretrained``.
    This changes ``model`` in place (its adapters are gone afterwards): call it last."""
    return model.merge_and_unload() if is_lora(model) else model


def _base_name(name: str) -> str:
    """A PEFT model's parameter or module name as the base model's checkpoint names it."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def base_weights(model) -> dict[str, torch.Tensor]:
    """The base model's own weights (adapters left out, not folded in), by checkpoint name."""
    return {_base_name(k): v.detach() for k, v in model.state_dict().items() if "lora_" not in k}


@torch.no_grad()
def merged_adapted_weights(model) -> dict[str, torch.Tensor]:
    """The weight of every layer that carries adapters, with the active adapters folded in
    (``W + B A * scale``), by checkpoint name; the model is left as it is."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter)
            out[_base_name(name) + ".weight"] = weight
    return out

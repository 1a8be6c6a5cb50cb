"""A trained reward model as a reward function (``reward_funcs=[runs/rm]``), as TRL does with a
model id: completions scored in batches with the reward model's own tokenizer and chat
template, without gradients, on the device its weights are on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from explorl.data.preferences import pair_text
from explorl.errors import UserError
from explorl.models.policy import disable_dropout, load_tokenizer, resolve_model_path


def is_reward_model_path(spec) -> bool:
    """Whether ``spec`` names a folder (or a run directory) holding a saved model."""
    if not isinstance(spec, str) or ":" in spec:
        return False
    path = Path(spec)
    return (path / "config.json").exists() or (path / "final" / "config.json").exists()


def load_reward_backbone(name: str):
    """A causal LM (or a trained reward model) as a sequence classifier with one output."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(name), num_labels=1, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise UserError(f"model={name}: cannot load it as a reward model "
                        f"({str(e).splitlines()[0]})") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)  # chosen and rejected are scored by the same function
    return model, tokenizer


def rewards_of(model, tokenizer, texts: list[str], max_length: int,
               batch_size: int = 0) -> torch.Tensor:
    """The model's scalar reward of each text, read at its last token (left padding)."""
    out = []
    size = batch_size or len(texts)
    for s in range(0, len(texts), size):
        ids = [tokenizer(t, add_special_tokens=False).input_ids[-max_length:]
               for t in texts[s:s + size]]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
        out.append(model(**{k: v.to(model.device) for k, v in inputs.items()}).logits[:, 0])
    return torch.cat(out).float()


class RewardModel:
    """``fn(prompts, completions, ...) -> list[float]``: the reward model's score of each
    prompt + completion. ``batch_size`` texts per forward pass (default 64), ``max_length``
    tokens kept per text (the end)."""

    __name__ = "reward_model"

    def __init__(self, path: str, batch_size: int = 64, max_length: int = 512,
                 device: str | torch.device = "cpu"):
        folder = Path(path) / "final" if (Path(path) / "final" / "config.json").exists() \
            else Path(path)
        config = json.loads((folder / "config.json").read_text())
        kinds = config.get("architectures") or []
        if not any(k.endswith("ForSequenceClassification") for k in kinds) \
                or config.get("num_labels", len(config.get("id2label") or {0: 0})) != 1:
            raise UserError(f"reward_funcs: {path} is not a reward model (a sequence classifier "
                            f"with one output; its architectures: {', '.join(kinds) or '?'}); "
                            "train one with explorl rm")
        self.model, self.tokenizer = load_reward_backbone(str(folder))
        self.model.to(device).eval().requires_grad_(False)
        self.path, self.batch_size, self.max_length = str(folder), batch_size, max_length

    @torch.no_grad()
    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        texts = [pair_text(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        if not texts:
            return []
        return rewards_of(self.model, self.tokenizer, texts, self.max_length,
                          self.batch_size).tolist()

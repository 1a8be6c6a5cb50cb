"""A trained reward model as a reward function (``reward_funcs=[runs/rm]``), as TRL does with a
model id: completions scored in batches with the reward model's own tokenizer and chat
template, without gradients, on the device its weights are on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from explorl.data.preferences import pair_text
from explorl.errors import UserError


def is_reward_model_path(spec) -> bool:
    """Whether ``spec`` names a folder (or a run directory) holding a saved model."""
    if not isinstance(spec, str) or ":" in spec:
        return False
    path = Path(spec)
    return (path / "config.json").exists() or (path / "final" / "config.json").exists()


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
        from explorl.rm import load_reward_backbone

        self.model, self.tokenizer = load_reward_backbone(str(folder))
        self.model.to(device).eval().requires_grad_(False)
        self.path, self.batch_size, self.max_length = str(folder), batch_size, max_length

    @torch.no_grad()
    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float]:
        from explorl.rm import rewards_of

        texts = [pair_text(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        if not texts:
            return []
        return rewards_of(self.model, self.tokenizer, texts, self.max_length,
                          self.batch_size).tolist()

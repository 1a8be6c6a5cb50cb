"""Filtered behaviour cloning: supervised fine-tuning on the successful samples only.

The baseline an offline RL method must beat to be worth having (rejection-sampling fine-tuning,
as in RAFT, Dong et al. 2023, and ReST, Gulcehre et al. 2023): keep the samples whose reward is
at least ``success_threshold`` and maximise their log-likelihood, the mean over their tokens.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from explorl.algorithms.losses import masked_mean
from explorl.batch import OfflineBatch
from explorl.errors import UserError
from explorl.models.policy import completion_logprobs


class FilteredBC:
    """``method=filtered_bc``: no knobs of its own beyond ``success_threshold``."""

    def __init__(self, cfg, model):
        self.threshold = cfg.success_threshold

    def select(self, rows: list[dict]) -> list[dict]:
        kept = [r for r in rows if r["reward"] >= self.threshold]
        if not kept:
            raise UserError(f"dataset: no sample has a reward of at least success_threshold="
                            f"{self.threshold}: filtered_bc has nothing to imitate")
        return kept

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def loss(self, model, batch: OfflineBatch) -> tuple[torch.Tensor, dict]:
        ones = torch.ones(len(batch.rewards), device=batch.rewards.device)
        logps = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask,
                                    batch.completion_ids, batch.completion_mask, ones,
                                    with_entropy=False).logps
        nll = -masked_mean(logps, batch.completion_mask)
        return nll, {"bc/nll": float(nll.detach())}

    def after_step(self) -> None:
        pass

    def decoding(self, model):
        return nullcontext()

    def save(self, folder: Path) -> None:
        pass

    def state(self) -> dict:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        pass

"""The guide: the model that writes HeRL's revisions and teaches in hindsight self-distillation.

``policy`` (the reference): the policy itself, so the revise mode is trained with the answers
and drifts with them. ``initial``: a frozen copy of the starting weights, a revise mode that
stays as good as the warm start made it. ``ema``: an exponential moving average of the policy
(after each optimizer step ``guide <- (1 - rate) guide + rate policy``), which follows the
policy slowly. A copy costs one more model in memory; it runs in one process.
"""

from __future__ import annotations

import copy

import torch


class Guide:
    """``kind`` (``policy``, ``initial``, ``ema``) of ``policy``; ``rate`` the EMA's."""

    def __init__(self, kind: str, policy: torch.nn.Module, rate: float = 0.01):
        self.kind, self.rate = kind, rate
        self.model = policy if kind == "policy" else \
            copy.deepcopy(policy).eval().requires_grad_(False)

    @property
    def is_policy(self) -> bool:
        return self.kind == "policy"

    @torch.no_grad()
    def observe(self, policy: torch.nn.Module) -> None:
        """After an optimizer step: an EMA guide moves towards the policy."""
        if self.kind != "ema":
            return
        for mine, theirs in zip(self.model.parameters(), policy.parameters()):
            mine.lerp_(theirs.detach().to(mine.dtype), self.rate)

    def tensors(self) -> dict[str, torch.Tensor]:
        """An EMA guide's weights, to resume it (a frozen one is rebuilt from the model)."""
        if self.kind != "ema":
            return {}
        # parameters, not the state dict: tied embeddings are one tensor and are saved once
        return {f"guide.{k}": v.detach() for k, v in self.model.named_parameters()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.kind != "ema":
            return
        for name, p in self.model.named_parameters():
            p.copy_(tensors[f"guide.{name}"])

"""What an algorithm plugs into the training step.

The trainer collects a scored batch (and HeRL may revise it), then asks the algorithm for the
whole batch's advantages, and the update asks it for the per-token policy loss of each
micro-batch. KL to a reference and the entropy bonus are added by the update for every
algorithm. An algorithm that needs a model of its own (PPO's critic) builds it from the config
in its constructor and gives ``state()``/``load(state)`` for checkpoints.
"""

from __future__ import annotations

from typing import Protocol

import torch

from explorl.batch import TrainBatch


class Algorithm(Protocol):
    def advantages(self, batch: TrainBatch, loss_mask: torch.Tensor) -> torch.Tensor:
        """Per-token advantages ``[N, L]`` of the whole batch."""
        ...

    def policy_loss(self, logps: torch.Tensor, old_logps: torch.Tensor,
                    advantages: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss ``[n, L]`` of a micro-batch (gradients through ``logps``) and a bool
        mask of the tokens where clipping bound it."""
        ...

"""The optimizer and seeding every trainer shares."""

from __future__ import annotations

import random

import numpy as np
import torch


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device has one (CPU and CUDA do)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

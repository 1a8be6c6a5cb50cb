"""Algorithms: how advantages are computed and what the policy loss is.

An algorithm is one module beside :mod:`explorl.algorithms.grpo` with a class that follows
:class:`explorl.algorithms.base.Algorithm`; adding one is a module and a line here. Names are
resolved lazily, so the config can list them without importing torch code.
"""

from __future__ import annotations

import importlib

ALGORITHMS: dict[str, str] = {
    "grpo": "explorl.algorithms.grpo:GRPO",
    "ppo": "explorl.algorithms.ppo:PPO",
}


def build_algorithm(cfg):
    """The algorithm ``cfg.algorithm`` names, built from the config."""
    module, name = ALGORITHMS[cfg.algorithm].split(":")
    return getattr(importlib.import_module(module), name)(cfg)

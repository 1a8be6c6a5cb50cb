"""Algorithms: how advantages are computed and what the policy loss is.

An online algorithm is one module beside :mod:`explorl.algorithms.grpo` with a class that
follows :class:`explorl.algorithms.base.Algorithm`; an offline one (trained on a fixed data set
of scored samples by :class:`explorl.offline.OfflineTrainer`) is named in ``OFFLINE`` too.
Adding one is a module and a line here. Names are resolved lazily, so the config can list them
without importing torch code.
"""

from __future__ import annotations

import importlib

ALGORITHMS: dict[str, str] = {
    "grpo": "explorl.algorithms.grpo:GRPO",
    "ppo": "explorl.algorithms.ppo:PPO",
    "ilql": "explorl.algorithms.ilql:ILQL",
    "filtered_bc": "explorl.algorithms.filtered_bc:FilteredBC",
}
OFFLINE = ("ilql", "filtered_bc")
"""Algorithms that learn from a fixed data set of scored samples, without sampling."""


def build_algorithm(cfg, *args):
    """The algorithm ``cfg.algorithm`` names, built from the config (and, for an offline one,
    the model it trains)."""
    module, name = ALGORITHMS[cfg.algorithm].split(":")
    return getattr(importlib.import_module(module), name)(cfg, *args)

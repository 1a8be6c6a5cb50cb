"""When a run stops rather than goes on: rewards that fail on too many of a step's samples, or
too many non-finite updates in a row. Fewer failures are logged and the run continues."""

from __future__ import annotations

import logging

from explorl.batch import ScoredBatch
from explorl.errors import TrainingStopped

log = logging.getLogger("explorl")


class FailurePolicy:
    """``reward_failure_limit``: the share of a step's samples a reward may fail on;
    ``nonfinite_limit``: skipped (non-finite) updates in a row that stop the run."""

    def __init__(self, reward_failure_limit: float, nonfinite_limit: int):
        self.reward_failure_limit, self.nonfinite_limit = reward_failure_limit, nonfinite_limit
        self.nonfinite_streak = 0

    def check_rewards(self, step: int, batch: ScoredBatch) -> None:
        """Log each masked reward; stop when failures pass the limit (every process alike: the
        batch is the whole batch)."""
        rewards = batch.rewards
        for error in rewards.errors:
            log.warning("step %d: reward masked: %s", step, error)
        if rewards.failed > self.reward_failure_limit * len(batch):
            raise TrainingStopped(
                f"step {step}: rewards failed on {rewards.failed} of {len(batch)} samples "
                f"(over reward_failure_limit={self.reward_failure_limit}); first error: "
                f"{(rewards.errors or ['?'])[0]}")

    def check_update(self, step: int, skipped: bool) -> None:
        self.nonfinite_streak = self.nonfinite_streak + 1 if skipped else 0
        if self.nonfinite_streak >= self.nonfinite_limit:
            raise TrainingStopped(f"step {step}: the loss or gradient was not finite in "
                                  f"{self.nonfinite_streak} steps in a row (nonfinite_limit)")

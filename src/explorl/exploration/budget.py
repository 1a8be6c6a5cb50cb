"""E3 rollout budgets: more samples where a group is likely to be informative, same total.

Liao et al., "Enhancing Efficiency and Exploration in Reinforcement Learning for LLMs" (EMNLP
2025). Each prompt's pass statistics are kept over the whole run (keyed by a stable prompt id).
A batch of B prompts with base n samples each gets ``n_i`` samples, ``sum n_i = n * B`` and
``n_min <= n_i <= n_max`` (hard bounds), by one of two rules:

* ``rank``: the paper's rule. Prompts are ranked by pass rate over all prompts seen so far
  (easiest first, ties at random); ``rank_i = position / N`` in [0, 1);
  ``n_i = floor(n_min + (R - n_min * B) * rank_i / sum_j rank_j)``; the leftover goes one by one
  to the hardest prompts that are still below ``n_max``.
* ``pilot`` (ours; also ``rank`` in the first pass, where its bounds are both n): every prompt
  first gets a pilot of a few samples; the rest of the same total goes, one sample at a time,
  to the prompt whose chance of a mixed group rises most: a pilot that came out all wrong needs
  a success, one all right a failure, a mixed one nothing more (:func:`pilot_allocation`).
  Budgets act from the first step, where the rank rule waits for a full pass over the data.
* ``mixed``: ours. With a pass-rate estimate p_i (a Beta prior centred on the run's mean pass
  rate for prompts seen little or never), a group of n is informative (mixed outcomes) with
  probability ``1 - p^n - (1 - p)^n``. Samples are handed out one at a time to the largest gain
  in that probability; the gains shrink with n, so the greedy hand-out maximises the expected
  number of informative groups.
"""

from __future__ import annotations

import numpy as np


class DifficultyStats:
    """Running passes and sample counts per prompt id, never reset."""

    def __init__(self) -> None:
        self.passes: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, prompt_ids: list[str], passed: list[list[bool]]) -> None:
        """``passed[i]`` are the pass flags of prompt ``prompt_ids[i]``'s known samples."""
        for pid, flags in zip(prompt_ids, passed):
            self.passes[pid] = self.passes.get(pid, 0.0) + float(sum(flags))
            self.counts[pid] = self.counts.get(pid, 0) + len(flags)

    def mean_pass_rate(self) -> float:
        total = sum(self.counts.values())
        return sum(self.passes.values()) / total if total else 0.5

    def estimate(self, pid: str, prior_strength: float, fresh: list[bool] = ()) -> float:
        """Posterior-mean pass rate with a Beta prior centred on the run's mean pass rate, the
        outcomes ``fresh`` (not yet recorded) counted too."""
        prior = self.mean_pass_rate()
        return (self.passes.get(pid, 0.0) + sum(fresh) + prior_strength * prior) / (
            self.counts.get(pid, 0) + len(fresh) + prior_strength)

    def rate(self, pid: str) -> float | None:
        n = self.counts.get(pid, 0)
        return self.passes[pid] / n if n else None

    def state(self) -> dict:
        return {"passes": self.passes, "counts": self.counts}

    def load(self, state: dict) -> None:
        self.passes = {k: float(v) for k, v in state["passes"].items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


def _check(total: int, size: int, n_min: int, n_max: int) -> None:
    if not n_min * size <= total <= n_max * size:
        raise ValueError(f"cannot give {total} samples to {size} prompts within "
                         f"[{n_min}, {n_max}] each")


def rank_allocation(ranks: list[float], total: int, n_min: int, n_max: int,
                    rng: np.random.Generator) -> list[int]:
    """The paper's rank-proportional rule, with ``n_max`` a hard cap. ``ranks`` in [0, 1),
    larger = harder. Ties among equally hard prompts for the leftover are broken by ``rng``."""
    size = len(ranks)
    _check(total, size, n_min, n_max)
    r = np.asarray(ranks, dtype=float)
    spare = total - n_min * size
    if r.sum() > 0:
        n = np.floor(n_min + spare * r / r.sum()).astype(int)
    else:  # no prompt is harder than another: split evenly, remainder at random
        n = np.full(size, n_min + spare // size)
    n = np.minimum(n, n_max)
    hardest_first = np.lexsort((rng.random(size), -r))
    while n.sum() < total:
        for i in hardest_first:
            if n.sum() < total and n[i] < n_max:
                n[i] += 1
    return n.tolist()


def p_mixed(p: np.ndarray | float, n: np.ndarray | int) -> np.ndarray | float:
    """Probability that n independent samples with pass rate p are neither all right nor all
    wrong."""
    return 1.0 - p ** n - (1.0 - p) ** n


def mixed_allocation(pass_rates: list[float], total: int, n_min: int, n_max: int,
                     rng: np.random.Generator) -> list[int]:
    """Maximise the expected number of mixed-outcome groups: start every prompt at ``n_min``,
    then give each further sample to the prompt whose P(mixed) gains most (ties at random)."""
    size = len(pass_rates)
    _check(total, size, n_min, n_max)
    p = np.asarray(pass_rates, dtype=float)
    n = np.full(size, n_min)
    tiebreak = rng.random(size)
    for _ in range(total - n_min * size):
        gain = p_mixed(p, n + 1) - p_mixed(p, n)
        gain = np.where(n < n_max, gain, -np.inf)
        best = np.flatnonzero(gain == gain.max())
        n[best[np.argmax(tiebreak[best])]] += 1
    return n.tolist()


def mixed_after(passes: list[bool], extra: int, p: float) -> float:
    """Probability that a group is mixed (neither all right nor all wrong) once ``extra`` more
    samples with pass rate ``p`` join the known outcomes ``passes``."""
    if any(passes) and not all(passes):
        return 1.0
    if not passes:
        return float(p_mixed(p, extra)) if extra else 0.0
    return 1.0 - (p if all(passes) else 1.0 - p) ** extra


def pilot_allocation(passes: list[list[bool]], total: int, lo: list[int], hi: list[int],
                     pass_rates: list[float], rng: np.random.Generator) -> list[int]:
    """Extra samples per prompt after a pilot whose outcomes are ``passes``: ``lo[i] <= e_i <=
    hi[i]``, ``sum e_i = total``, each further sample to the prompt whose chance of a mixed
    group it raises most (a pilot that came out all right or all wrong needs the other outcome;
    a mixed one is informative already), ties at random. ``pass_rates``: each prompt's estimate."""
    size = len(passes)
    if not sum(lo) <= total <= sum(hi):
        raise ValueError(f"cannot give {total} extra samples to {size} prompts within their "
                         "bounds")
    e = np.array(lo, dtype=int)
    tiebreak = rng.random(size)
    for _ in range(total - int(e.sum())):
        gain = np.array([mixed_after(passes[i], e[i] + 1, pass_rates[i])
                         - mixed_after(passes[i], e[i], pass_rates[i]) for i in range(size)])
        gain = np.where(e < np.asarray(hi), gain, -np.inf)
        best = np.flatnonzero(gain == gain.max())
        e[best[np.argmax(tiebreak[best])]] += 1
    return e.tolist()


class RolloutBudget:
    """Per-batch sample counts from difficulty statistics (``method=e3``, ``e3.budget``).

    ``rule``: ``rank`` (default) or ``mixed``. Bounds: for ``mixed``, ``[n_low, n_high]`` from
    the start; for ``rank``, the paper's schedule: both bounds start at n and widen by ``delta``
    per epoch until ``[n_low, n_high]``. ``rerank``: refresh pass-rate estimates (``mixed``) or
    ranks (``rank``) every ``step`` or once at the start of each ``epoch`` (pass over the data).
    :meth:`allocate` before sampling, :meth:`observe` after scoring.
    """

    def __init__(self, n: int, n_low: int, n_high: int, *, rule: str = "rank", delta: int = 2,
                 rerank: str = "step", prior_strength: float = 2.0, seed: int = 0,
                 pilot: int = 0):
        self.n, self.n_low, self.n_high, self.pilot = n, n_low, n_high, pilot
        self.rule, self.delta, self.rerank = rule, delta, rerank
        self.prior_strength, self.seed = prior_strength, seed
        self.stats = DifficultyStats()
        self.epoch = 0
        self.frozen: dict | None = None  # estimates or ranks fixed for the current epoch

    @classmethod
    def from_config(cls, cfg) -> RolloutBudget:
        """From a :class:`explorl.config.TrainConfig` (``num_generations``, ``seed``, ``e3``)."""
        e3 = cfg.e3
        return cls(cfg.num_generations, e3.budget_min, e3.budget_max, rule=e3.budget_rule,
                   delta=e3.budget_delta, rerank=e3.budget_rerank,
                   prior_strength=e3.budget_prior_strength, seed=cfg.seed,
                   pilot=e3.pilot_samples)

    def bounds(self) -> tuple[int, int]:
        if self.rule == "mixed":
            return self.n_low, self.n_high
        widen = self.delta * self.epoch
        return max(self.n - widen, self.n_low), min(self.n + widen, self.n_high)

    def new_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.frozen = None

    def _snapshot(self, rng: np.random.Generator, only: list[str] | None = None) -> dict:
        """Pass-rate estimates (``mixed``) or ranks in [0, 1) (``rank``) per prompt id, and the
        value for a prompt not in the table. Ranks need every prompt seen so far; unseen prompts
        get the lowest rank, as in the paper."""
        if self.rule == "mixed":
            pids = only if only is not None else list(self.stats.counts)
            table = {pid: self.stats.estimate(pid, self.prior_strength) for pid in pids}
            return {"table": table, "default": self.stats.mean_pass_rate()}
        seen = list(self.stats.counts)
        rates = np.array([self.stats.rate(pid) for pid in seen])
        order = np.lexsort((rng.random(len(seen)), -rates))  # easiest first, ties at random
        return {"table": {seen[i]: pos / len(seen) for pos, i in enumerate(order)},
                "default": 0.0}

    def allocate(self, prompt_ids: list[str], step: int, epoch: int) -> list[int]:
        """Samples per prompt for this batch, drawn in pass ``epoch`` over the data (the pass
        of its first prompt); the same on every process for a given step."""
        self.new_epoch(epoch)
        rng = np.random.default_rng([self.seed, step])
        if self.rerank == "epoch":
            if self.frozen is None:
                self.frozen = self._snapshot(rng)
            snapshot = self.frozen
        else:
            snapshot = self._snapshot(rng, prompt_ids if self.rule == "mixed" else None)
        values = [snapshot["table"].get(pid, snapshot["default"]) for pid in prompt_ids]
        lo, hi = self.bounds()
        total = self.n * len(prompt_ids)
        if self.rule == "mixed":
            return mixed_allocation(values, total, lo, hi, rng)
        return rank_allocation(values, total, lo, hi, rng)

    def piloting(self, epoch: int) -> bool:
        """Whether this step's budget follows a pilot: always under ``rule=pilot``; under
        ``rank`` while its bounds are both ``n`` (the first pass), where the rank rule would
        give every prompt the same."""
        self.new_epoch(epoch)
        if self.pilot < 1:
            return False
        return self.rule == "pilot" or self.rule == "rank" and self.bounds() == (self.n, self.n)

    def after_pilot(self, prompt_ids: list[str], passes: list[list[bool]],
                    step: int) -> list[int]:
        """Extra samples per prompt once each has had ``pilot`` (whose known outcomes are
        ``passes``): the rest of the step's total ``n * len(prompt_ids)``, every prompt ending
        within ``[n_low, n_high]``, by :func:`pilot_allocation` with pass rates from the
        run's statistics and the pilot (a Beta prior centred on the run's pass rate)."""
        rng = np.random.default_rng([self.seed, step, 1])
        rates = [self.stats.estimate(pid, self.prior_strength, f)
                 for pid, f in zip(prompt_ids, passes)]
        size = len(prompt_ids)
        lo = [max(0, self.n_low - self.pilot)] * size
        hi = [self.n_high - self.pilot] * size
        return pilot_allocation(passes, (self.n - self.pilot) * size, lo, hi, rates, rng)

    def observe(self, prompt_ids: list[str], passes: list[list[bool]]) -> None:
        """Record the pass flags of each prompt's known samples."""
        self.stats.update(prompt_ids, passes)

    def state(self) -> dict:
        return {"stats": self.stats.state(), "epoch": self.epoch, "frozen": self.frozen}

    def load(self, state: dict) -> None:
        self.stats.load(state["stats"])
        self.epoch = state["epoch"]
        self.frozen = state["frozen"]

"""The plain data one training step hands along, in the order it flows.

``Rollout``: sampled token ids, grouped by prompt. ``Rewards``: what scoring them gave.
``ScoredBatch``: the two together, what collecting returns (whole on every process).
``TrainBatch``: what the algorithm trains on, the scored batch after HeRL's changes if any.
``Advantages``: what an algorithm's advantage estimate hands the update, row by row.
``UpdateBatch``: this process's rows of a train batch, with what the loss terms need for them.
``OfflineBatch``: scored samples from a fixed data set, for the offline methods.

Dataclasses of tensors and lists, and nothing else: this module imports nothing of explorl, so
every other module can build on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch


def _apply(t, fn):
    """``fn(t)``, or None for a field that is None."""
    return None if t is None else fn(t)


def added(counts: list[dict]) -> dict:
    """Counts of several parts, key by key."""
    return {k: sum(c.get(k, 0) for c in counts) for k in {k for c in counts for k in c}}


@dataclass
class Rollout:
    """Samples of one step, one row each, grouped by the prompt they answer.

    ``prompt_ids`` are left-padded, ``completion_ids`` right-padded; ``completion_mask`` covers
    the tokens up to and including the first EOS. ``group_ids[i]`` is the index of row i's
    prompt in the request. ``sampling_logps`` are the engine's log-probs of the tokens it
    sampled, under the distribution it drew them from (``softmax(logits / T)``, renormalised
    over the top-p nucleus when ``top_p < 1``; 0 at padding; a NaN row: not known, as for a
    revision moved under another prompt); None when the engine gives none.
    """

    prompt_ids: torch.Tensor  # [N, Lp] long
    prompt_mask: torch.Tensor  # [N, Lp] long
    completion_ids: torch.Tensor  # [N, Lc] long
    completion_mask: torch.Tensor  # [N, Lc] long
    temperatures: torch.Tensor  # [N] float
    group_ids: torch.Tensor  # [N] long
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens
    sampling_logps: torch.Tensor | None = None  # [N, Lc] float: the engine's, see above
    tool_mask: torch.Tensor | None = None  # [N, Lc] long: 1 where the model wrote the token, 0
    # where a tool or an environment did (multi-turn rollouts); None: the model wrote them all

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def completions(self) -> list[list[int]]:
        """Each row's completion token ids, without padding."""
        return [row[: int(n)] for row, n in zip(self.completion_ids.tolist(),
                                                self.lengths.tolist())]

    def prompt(self, i: int) -> list[int]:
        """Row ``i``'s prompt token ids, without padding."""
        return self.prompt_ids[i][self.prompt_mask[i].bool()].tolist()

    def to(self, device: torch.device | str) -> Rollout:
        """Every field on ``device``."""
        return Rollout(*(_apply(getattr(self, f.name), lambda t: t.to(device))
                         for f in fields(self)))

    def trimmed(self) -> Rollout:
        """The same rows without the columns that are padding in every row (left of the
        prompts, right of the completions)."""
        if not len(self):
            return self
        prompt_width = int(self.prompt_mask.sum(-1).max())
        completion_width = int(self.lengths.max())
        start = self.prompt_ids.shape[1] - prompt_width
        return replace(self, prompt_ids=self.prompt_ids[:, start:],
                       prompt_mask=self.prompt_mask[:, start:],
                       completion_ids=self.completion_ids[:, :completion_width],
                       completion_mask=self.completion_mask[:, :completion_width],
                       sampling_logps=_apply(self.sampling_logps,
                                             lambda t: t[:, :completion_width]),
                       tool_mask=_apply(self.tool_mask, lambda t: t[:, :completion_width]))

    def select(self, rows) -> Rollout:
        """The rows ``rows`` (a slice, indices or a bool mask), every field alike."""
        return Rollout(*(_apply(getattr(self, f.name), lambda t: t[rows]) for f in fields(self)))

    @classmethod
    def empty(cls) -> Rollout:
        ids = torch.zeros(0, 0, dtype=torch.long)
        return cls(ids, ids, ids, ids, torch.zeros(0), torch.zeros(0, dtype=torch.long),
                   torch.zeros(0, dtype=torch.bool))

    @classmethod
    def concat(cls, parts: list[Rollout], pad_id: int) -> Rollout:
        """Rows of ``parts`` in order (prompts re-left-padded, completions right-padded to the
        widest); group ids are kept as they are. Sampling log-probs are NaN for the rows of a
        part without them (None if no part has them)."""
        parts = [p for p in parts if len(p)] or parts[:1]
        width_p = max(p.prompt_ids.shape[1] for p in parts)
        width_c = max(p.completion_ids.shape[1] for p in parts)

        def left(t, fill):
            return torch.nn.functional.pad(t, (width_p - t.shape[1], 0), value=fill)

        def right(t, fill):
            return torch.nn.functional.pad(t, (0, width_c - t.shape[1]), value=fill)

        return cls(torch.cat([left(p.prompt_ids, pad_id) for p in parts]),
                   torch.cat([left(p.prompt_mask, 0) for p in parts]),
                   torch.cat([right(p.completion_ids, pad_id) for p in parts]),
                   torch.cat([right(p.completion_mask, 0) for p in parts]),
                   torch.cat([p.temperatures for p in parts]),
                   torch.cat([p.group_ids for p in parts]),
                   torch.cat([p.truncated for p in parts]),
                   None if all(p.sampling_logps is None for p in parts) else torch.cat([
                       right(p.unknown_logps() if p.sampling_logps is None
                             else p.sampling_logps, 0.0) for p in parts]),
                   None if all(p.tool_mask is None for p in parts) else torch.cat([
                       right(p.completion_mask if p.tool_mask is None else p.tool_mask, 0)
                       for p in parts]))

    def unknown_logps(self) -> torch.Tensor:
        """NaN sampling log-probs in this rollout's completion shape: rows without them."""
        return torch.full(self.completion_ids.shape, math.nan,
                          device=self.completion_ids.device)


@dataclass
class Rewards:
    """Scored samples: the weighted total, each function's values, failures and grades."""

    total: torch.Tensor  # [N] weighted sum; NaN where the reward is unknown (masked)
    per_func: dict[str, torch.Tensor]  # name -> [N], NaN where None or failed
    masked: int  # samples whose reward is unknown (a function failed, or none applied)
    errors: list[str]  # one line per failure, for the log
    grades: list | None = None  # per-criterion grades of the first graded reward, if any
    failed: int = 0  # samples where a function raised or gave a non-finite/unusable value
    graded_by: str | None = None  # the name of the reward the grades are of

    def met(self) -> torch.Tensor:
        """[N] how much of its rubric each sample met: the graded reward's own value (others,
        a cost per tool call, left out), else the total; NaN where the total is unknown."""
        if self.graded_by is None:
            return self.total
        return self.per_func[self.graded_by].masked_fill(self.total.isnan(), math.nan)

    def to(self, device: torch.device | str) -> Rewards:
        """The tensors on ``device``; counts, errors and grades as they are."""
        return replace(self, total=self.total.to(device),
                       per_func={k: v.to(device) for k, v in self.per_func.items()})

    def select(self, rows: list[int]) -> Rewards:
        """The samples ``rows``; ``masked`` counted over them, errors and failures left out."""
        index = torch.tensor(rows, device=self.total.device, dtype=torch.long)
        grades = None if self.grades is None else [self.grades[i] for i in rows]
        return Rewards(self.total[index], {k: v[index] for k, v in self.per_func.items()},
                       int(self.total[index].isnan().sum()), [], grades, 0, self.graded_by)

    @classmethod
    def concat(cls, parts: list[Rewards]) -> Rewards:
        """Rows of ``parts`` in order (one batch scored in pieces)."""
        grades = None if any(p.grades is None for p in parts) else [
            g for p in parts for g in p.grades]
        # a part may lack a column (an episode's environment reward, where no environment
        # could be made): NaN there, as for a function that gave nothing
        names = list(dict.fromkeys(k for p in parts for k in p.per_func))
        return cls(torch.cat([p.total for p in parts]),
                   {k: torch.cat([p.per_func[k] if k in p.per_func
                                  else torch.full_like(p.total, math.nan) for p in parts])
                    for k in names},
                   sum(p.masked for p in parts), [e for p in parts for e in p.errors], grades,
                   sum(p.failed for p in parts),
                   next((p.graded_by for p in parts if p.graded_by), None))


@dataclass
class Normalizer:
    """Whole-batch counts, so each micro-batch's (and each process's) loss is its share of the
    whole batch's loss."""

    num_sequences: int  # rows of the batch, masked ones included (TRL's convention)
    num_tokens: int  # trained tokens in the batch
    max_completion_length: int
    row_tokens: dict[str, int] = field(default_factory=dict)  # trained tokens of each named
    # row set, for terms that are a mean over their own rows' tokens


@dataclass
class ScoredBatch:
    """Samples of one request with their rewards; ``rollout.group_ids`` index ``rows``."""

    rollout: Rollout
    rows: list[dict]  # the data row of each prompt of the request
    texts: list[str]  # each sample's completion text
    rewards: Rewards  # weighted total, per function, per-criterion grades, failures
    passed: torch.Tensor  # [N] bool: the first reward function at or above success_threshold
    seconds: dict[str, float]  # spent generating and scoring (this process)
    metrics: dict[str, float] = field(default_factory=dict)  # counts collecting made
    # (multi-turn rollouts: episodes, turns, tool calls and errors, tokens by role)

    def __len__(self) -> int:
        return len(self.rollout)

    @property
    def generated_tokens(self) -> int:
        """Tokens the model generated (a tool's answers are not)."""
        mask = self.rollout.completion_mask
        return int((mask if self.rollout.tool_mask is None else mask * self.rollout.tool_mask)
                   .sum())

    def joined(self, other: ScoredBatch, groups: list[int], pad_id: int) -> ScoredBatch:
        """This batch with ``other``'s samples after it: more samples of this request's
        prompts, ``other``'s group ``g`` being this one's ``groups[g]``."""
        rollout = replace(other.rollout, group_ids=torch.tensor(
            groups, dtype=torch.long, device=other.rollout.group_ids.device)[
                other.rollout.group_ids])
        seconds = {k: self.seconds.get(k, 0.0) + other.seconds.get(k, 0.0)
                   for k in {**self.seconds, **other.seconds}}
        return ScoredBatch(Rollout.concat([self.rollout, rollout], pad_id), self.rows,
                           self.texts + other.texts,
                           Rewards.concat([self.rewards, other.rewards]),
                           torch.cat([self.passed, other.passed]), seconds,
                           added([self.metrics, other.metrics]))

    def passes_by_prompt(self) -> list[list[bool]]:
        """Pass flags of each prompt's samples whose reward is known."""
        known = ~self.rewards.total.isnan()
        return [self.passed[(self.rollout.group_ids == g) & known].tolist()
                for g in range(len(self.rows))]


@dataclass
class TrainBatch:
    """The samples an algorithm trains on, row by row.

    ``rows`` names sets of rows that a loss term is restricted to (HeRL's ``revision`` rows get
    the revision term, the others the policy gradient); a term whose name is not a key covers
    every row. ``behaviour_logps`` are the log-probs of the policy that wrote a row, where it is
    not the policy that samples under the row's prompt (a revision written under a hindsight
    prompt and trained under the original one); None where no row needs them. ``teacher_*``: a
    distillation target at each completion position of the rows marked ``distill``.
    """

    rollout: Rollout
    rewards: torch.Tensor  # [N], NaN = unknown (masked)
    texts: list[str]
    rows: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N] bool
    behaviour_logps: torch.Tensor | None = None  # [N, L]
    trained_under: list | None = None  # per row, for the completions log: False, or the
    # prompt a revision is trained under (True: the original one)
    teacher_ids: torch.Tensor | None = None  # [N, L, K] a teacher's top K tokens per position
    teacher_logps: torch.Tensor | None = None  # [N, L, K] and their log-probs (distillation)

    @classmethod
    def of(cls, batch: ScoredBatch) -> TrainBatch:
        return cls(batch.rollout, batch.rewards.total, batch.texts)

    def __len__(self) -> int:
        return len(self.rollout)

    def loss_mask(self, mask_truncated: bool) -> torch.Tensor:
        """Completion tokens that carry the loss: the model's own (not a tool's), not those of
        unknown rewards, nor (with ``mask_truncated``) of completions cut off without EOS."""
        mask = self.rollout.completion_mask.clone()
        if self.rollout.tool_mask is not None:  # the environment's tokens are not the policy's
            mask = mask * self.rollout.tool_mask
        mask[self.rewards.isnan()] = 0
        if mask_truncated:
            mask[self.rollout.truncated] = 0
        return mask


@dataclass
class Advantages:
    """An algorithm's estimate for every row of a train batch: what the update needs of it."""

    advantages: torch.Tensor  # [N, L]
    old_logps: torch.Tensor | None = None  # [N, L] of the sampling policy, when the estimate
    # needed them (PPO); the update takes them itself otherwise
    values: torch.Tensor | None = None  # [N, L] a critic's values at sampling time
    returns: torch.Tensor | None = None  # [N, L] the critic's regression targets
    metrics: dict = field(default_factory=dict)  # what the estimate measured, for the log


@dataclass
class UpdateBatch:
    """This process's rows of a :class:`TrainBatch`, with everything the loss terms read.

    :meth:`select` takes a mini-batch (its own counts: one optimizer step each); :meth:`chunk`
    a micro-batch (the parent's counts: gradients of the chunks add up to the parent's)."""

    rollout: Rollout
    advantages: torch.Tensor  # [n, L]
    loss_mask: torch.Tensor  # [n, L]
    norm: Normalizer  # counts of the whole batch (over every process) or of a mini-batch
    generated_tokens: int  # completion tokens of the whole batch (entropy is their mean)
    old_logps: torch.Tensor | None = None  # [n, L]; None when the ratio is exactly 1
    ref_logps: torch.Tensor | None = None  # [n, L]; None without a KL term
    behaviour_logps: torch.Tensor | None = None  # [n, L]: the policy that wrote a row
    values: torch.Tensor | None = None  # [n, L] a critic's, at sampling time
    returns: torch.Tensor | None = None  # [n, L]
    rows: dict[str, torch.Tensor] = field(default_factory=dict)  # term name -> [n] bool
    policy_mask: torch.Tensor | None = None  # [n, L]: tokens that carry the policy loss
    # (top_entropy_quantile < 1); None: every token of loss_mask
    teacher_ids: torch.Tensor | None = None  # [n, L, K]
    teacher_logps: torch.Tensor | None = None  # [n, L, K]

    def __len__(self) -> int:
        return len(self.rollout)

    def _rows(self, rows, width: int | None = None) -> dict:
        """Every per-row field cut to ``rows`` (and per-token ones to ``width`` columns)."""
        def cut(t):
            if t is None:
                return None
            t = t[rows]
            return t if width is None or t.dim() < 2 else t[:, :width]

        out = {f.name: cut(getattr(self, f.name)) for f in fields(self)
               if f.name not in ("rollout", "norm", "generated_tokens", "rows")}
        return {**out, "rows": {k: v[rows] for k, v in self.rows.items()}}

    def select(self, rows) -> UpdateBatch:
        """The rows ``rows`` as a batch of their own: a mini-batch, with its own counts."""
        parts = self._rows(rows)
        rollout = self.rollout.select(rows)
        mask = parts["loss_mask"]
        norm = Normalizer(int(mask.shape[0]), int(mask.sum()), self.norm.max_completion_length,
                          {k: int(mask[v].sum()) for k, v in parts["rows"].items()})
        return UpdateBatch(rollout=rollout, norm=norm,
                           generated_tokens=int(rollout.completion_mask.sum()), **parts)

    def chunk(self, rows: list[int]) -> UpdateBatch:
        """A micro-batch of ``rows``, cut to its own longest prompt and completion; its losses
        are shares of this batch's (same counts)."""
        rollout = self.rollout.select(rows).trimmed()
        parts = self._rows(rows, rollout.completion_ids.shape[1])
        return UpdateBatch(rollout=rollout, norm=self.norm,
                           generated_tokens=self.generated_tokens, **parts)

    def rows_of(self, name: str) -> torch.Tensor | None:
        """The rows a term named ``name`` covers, ``[n, 1]`` bool; None: every row."""
        rows = self.rows.get(name)
        return None if rows is None else rows.unsqueeze(-1)


@dataclass
class OfflineBatch:
    """Scored samples from a fixed data set (offline methods): prompts left-padded,
    completions (EOS included) right-padded."""

    prompt_ids: torch.Tensor  # [N, Lp] long
    prompt_mask: torch.Tensor  # [N, Lp] long
    completion_ids: torch.Tensor  # [N, T] long
    completion_mask: torch.Tensor  # [N, T] long
    rewards: torch.Tensor  # [N] float

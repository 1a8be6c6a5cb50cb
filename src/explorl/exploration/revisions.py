"""HeRL's revision rows: a revision (or a copy of a draft) written into a slot of its group,
and the replay buffer of revisions for the supervised term."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from explorl.batch import Rollout, ScoredBatch, TrainBatch
from explorl.rollout.engine import left_pad, right_pad


@dataclass
class Sample:
    """One row's content to write into a rollout: prompt, completion, how it was drawn."""

    prompt: list[int]
    completion: list[int]
    temperature: float
    truncated: bool
    by_model: list[int] | None = None  # an episode's: 0 where a tool wrote the token


def sample_at(rollout: Rollout, i: int) -> Sample:
    n = int(rollout.lengths[i])
    return Sample(rollout.prompt(i), rollout.completion_ids[i, :n].tolist(),
                  float(rollout.temperatures[i]), bool(rollout.truncated[i]),
                  None if rollout.tool_mask is None else rollout.tool_mask[i, :n].tolist())


def build_rollout(rows: list[Sample], pad_id: int, group_ids: torch.Tensor) -> Rollout:
    """A rollout of ``rows`` (on the CPU), prompts left-padded, completions right-padded; with
    a tool mask when any row is an episode."""
    prompt_ids, prompt_mask = left_pad([r.prompt for r in rows], pad_id)
    written = [[1] * len(r.completion) for r in rows]
    tool_mask = None if all(r.by_model is None for r in rows) else right_pad(
        [w if r.by_model is None else r.by_model for r, w in zip(rows, written)], 0)
    return Rollout(prompt_ids, prompt_mask, right_pad([r.completion for r in rows], pad_id),
                   right_pad(written, 0), torch.tensor([r.temperature for r in rows]),
                   group_ids.cpu(), torch.tensor([r.truncated for r in rows]),
                   tool_mask=tool_mask)


def splice(rollout: Rollout, writes: dict[int, Sample], pad_id: int) -> Rollout:
    """``rollout`` with row ``slot`` overwritten by ``writes[slot]``; group ids and the row count
    stay, so the written samples are normalised with their group. The written rows' sampling
    log-probs are not known (NaN): they were sampled under another prompt."""
    rows = [writes.get(i) or sample_at(rollout, i) for i in range(len(rollout))]
    out = build_rollout(rows, pad_id, rollout.group_ids).to(rollout.group_ids.device)
    if rollout.sampling_logps is not None:
        width = out.completion_ids.shape[1]
        logps = torch.nn.functional.pad(rollout.sampling_logps,
                                        (0, max(0, width - rollout.sampling_logps.shape[1])))
        logps = logps[:, :width].clone()
        logps[list(writes)] = math.nan
        out.sampling_logps = logps
    return out


class RevisionBuffer:
    """The last ``size`` revisions trained under the original prompt, replayed every step as
    rows of their own (each its own group: no baseline, no policy-gradient signal) that only
    the supervised term trains."""

    def __init__(self, size: int):
        self.size, self.samples = size, []

    def add(self, batch: TrainBatch, rows: torch.Tensor) -> None:
        for i in torch.nonzero(rows).flatten().tolist():
            self.samples.append((sample_at(batch.rollout, i), float(batch.rewards[i]),
                                 batch.texts[i]))
        self.samples = self.samples[-self.size:] if self.size else []

    def replay(self, batch: TrainBatch, pad_id: int) -> TrainBatch:
        """``batch`` with the buffered revisions appended, marked ``sft`` alone."""
        if not self.samples:
            return batch
        n, device = len(self.samples), batch.rollout.group_ids.device
        first = int(batch.rollout.group_ids.max()) + 1
        extra = build_rollout([s for s, _, _ in self.samples], pad_id,
                              torch.arange(first, first + n)).to(device)
        rows = {k: torch.cat([v, torch.full((n,), k == "sft", device=device)])
                for k, v in batch.rows.items()}
        width = max(batch.rollout.completion_ids.shape[1], extra.completion_ids.shape[1])
        behaviour = None if batch.behaviour_logps is None else torch.cat([
            torch.nn.functional.pad(batch.behaviour_logps,
                                    (0, width - batch.behaviour_logps.shape[1])),
            torch.zeros(n, width, device=device)])
        return replace(batch, rollout=Rollout.concat([batch.rollout, extra], pad_id),
                       rewards=torch.cat([batch.rewards, torch.tensor(
                           [r for _, r, _ in self.samples], device=device)]),
                       texts=batch.texts + [t for _, _, t in self.samples], rows=rows,
                       behaviour_logps=behaviour, trained_under=batch.trained_under + [True] * n)

    def state(self) -> list:
        return [[asdict(s), r, t] for s, r, t in self.samples]

    def load(self, state: list) -> None:
        self.samples = [(Sample(**s), r, t) for s, r, t in state]


def revision_metrics(revisions: ScoredBatch, gains: list[float], beat: int, failed: int,
                     accepted: list, token_fraction: float) -> dict:
    """``herl/*`` metrics of one step's revisions."""
    return {"herl/revisions": len(revisions),
            "herl/revision_success": float(revisions.passed.float().mean()),
            "herl/revision_gain": sum(gains) / len(gains) if gains else math.nan,
            "herl/beat_group": beat / failed,
            "herl/replaced": len(accepted),
            "herl/revision_token_fraction": token_fraction,
            "herl/tokens": revisions.generated_tokens}

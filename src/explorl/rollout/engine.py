"""The rollout engine protocol and its Hugging Face ``generate`` backend.

A request is a list of tokenised prompts, how many samples each gets and the temperature each is
drawn at. Counts and temperatures may differ per prompt: E3 gives harder prompts more samples and
changes the temperature between steps; HeRL samples revisions at its own temperature. An engine
also decodes greedily, for evaluation and test-time revision. The trainer, evaluation and
``improve`` take any object with these two methods. An engine that fills
``Rollout.sampling_logps`` says so with ``gives_sampling_logps = True``: the trainer then
corrects for whatever its probabilities differ from the trainer's.
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TopPLogitsWarper,
)

from explorl.batch import Rollout


class RolloutEngine(Protocol):
    gives_sampling_logps: bool

    def generate(
        self,
        prompts: list[list[int]],
        num_samples: list[int],
        temperatures: list[float],
        max_new_tokens: int,
        stop_ids: tuple[int, ...] = (),
    ) -> Rollout:
        """``num_samples[i]`` samples of ``prompts[i]`` at ``temperatures[i]`` each; a sample
        ends at EOS or at any of ``stop_ids`` (a tool call's last token), which it keeps."""
        ...

    def greedy(self, prompts: list[list[int]], max_new_tokens: int,
               stop_ids: tuple[int, ...] = ()) -> list[list[int]]:
        """The greedy completion of each prompt (token ids up to, not including, EOS; up to
        and including the first of ``stop_ids``)."""
        ...


class _SampledLogps(LogitsProcessor):
    """Records the log-prob of each sampled token under the scores it sees (as the last
    processor: the distribution sampled from): a call keeps the step's log-softmax and reads
    the token that the previous step sampled from the ids it is given; :meth:`result` reads
    the last one."""

    def __init__(self):
        self.last: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.steps.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.last = scores.float().log_softmax(-1)
        return scores

    def result(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """``[n, T]`` log-probs of ``completion_ids`` (the tokens generated)."""
        done = len(self.steps)
        if self.last is not None and done < completion_ids.shape[1]:
            self.steps.append(self.last.gather(-1, completion_ids[:, done:done + 1]).squeeze(-1))
        if not self.steps:
            return torch.zeros(completion_ids.shape, device=completion_ids.device)
        return torch.stack(self.steps, dim=1)


class _RowTemperature(LogitsProcessor):
    """Divides each row's logits by its own temperature."""

    def __init__(self, temperatures: torch.Tensor):
        self.temperatures = temperatures.view(-1, 1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperatures.to(scores.dtype)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list], fill, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Python rows as one ``[n, longest]`` tensor (at least one column), right-padded with
    ``fill``."""
    width = max(max((len(s) for s in seqs), default=0), 1)
    out = torch.full((len(seqs), width), fill, dtype=dtype)
    for i, s in enumerate(seqs):
        if s:
            out[i, :len(s)] = torch.tensor(s, dtype=dtype)
    return out


def right_pad_cat(parts: list[torch.Tensor], fill) -> torch.Tensor:
    """``[n_i, L_i]`` tensors stacked into one, each right-padded with ``fill`` to the widest."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill)
                      for p in parts])


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and those of the model's generation config: any of them ends a
    sample."""
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id] + (extra if isinstance(extra, list)
                                      else [extra] if extra is not None else [])
    return sorted({i for i in ids if i is not None})


def completion_mask_from(completion_ids: torch.Tensor,
                         eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first EOS, and whether each row ran out without one."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, dtype=torch.long,
                                                     device=completion_ids.device))
    seen_before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS tokens strictly before
    mask = (seen_before == 0).long()
    truncated = ~is_eos.any(-1)
    return mask, truncated


class HFEngine:
    """Sampling with ``model.generate`` (KV cache), per-row temperatures, ``top_p`` and EOS.

    ``generation_batch_size`` rows are sampled at a time (0: all at once); greedy decoding runs
    ``greedy_batch_size`` prompts at a time (default 256). Rollouts carry the sampled tokens'
    log-probs under the distribution they were drawn from (``softmax(logits / T)``, within the
    top-p nucleus when ``top_p < 1``)."""

    gives_sampling_logps = True

    def __init__(self, model, tokenizer, top_p: float = 1.0, generation_batch_size: int = 0,
                 greedy_batch_size: int = 256):
        self.model, self.tokenizer, self.top_p = model, tokenizer, top_p
        self.generation_batch_size = generation_batch_size
        self.greedy_batch_size = greedy_batch_size
        self.eos_ids = eos_token_ids(model, tokenizer)

    def generate(self, prompts, num_samples, temperatures, max_new_tokens,
                 stop_ids=()) -> Rollout:
        if not sum(num_samples):
            return Rollout.empty()
        stops = self.eos_ids + list(stop_ids)
        rows, temps, groups = [], [], []
        for g, (p, n, t) in enumerate(zip(prompts, num_samples, temperatures)):
            rows += [p] * n
            temps += [float(t)] * n
            groups += [g] * n
        pad, device = self.tokenizer.pad_token_id, self.model.device
        prompt_ids, prompt_mask = (t.to(device) for t in left_pad(rows, pad))
        temperature = torch.tensor(temps, device=device)
        chunk = self.generation_batch_size or len(rows)
        outs, logps = [], []
        for s in range(0, len(rows), chunk):
            with torch.inference_mode():  # cheaper than no_grad; outputs cloned out of it
                out, lp = self._sample(prompt_ids[s:s + chunk], prompt_mask[s:s + chunk],
                                       temperature[s:s + chunk], max_new_tokens, stops)
            outs.append(out.clone())
            logps.append(lp.clone())
        completion_ids = right_pad_cat(outs, pad)
        completion_mask, truncated = completion_mask_from(completion_ids, stops)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, pad)
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                       torch.tensor(groups, dtype=torch.long, device=device), truncated,
                       right_pad_cat(logps, 0.0) * completion_mask)

    def _sample(self, ids, mask, temperature, max_new_tokens,
                stops: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.model.training
        self.model.eval()
        config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0,  # top-p: ours, below
            max_new_tokens=max_new_tokens, eos_token_id=stops,
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
        )
        record = _SampledLogps()  # the distribution sampled from: tempered, then top-p
        nucleus = [TopPLogitsWarper(self.top_p)] if self.top_p < 1 else []
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config,
            logits_processor=LogitsProcessorList([_RowTemperature(temperature), *nucleus,
                                                  record]),
            synced_gpus=False,  # never in lockstep: under FSDP the weights are gathered first
        )
        self.model.train(was_training)
        completion = out[:, ids.shape[1]:]
        return completion, record.result(completion)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int,
               stop_ids=()) -> list[list[int]]:
        return greedy(self.model, self.tokenizer, prompts, max_new_tokens,
                      self.greedy_batch_size, stop_ids)


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int,
           batch_size: int = 256, stop_ids=()) -> list[list[int]]:
    """Greedy completions (token ids up to, not including, EOS; through the first of
    ``stop_ids``) for evaluation."""
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    results: list[list[int]] = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = (t.to(model.device)
                     for t in left_pad(prompts[s:s + batch_size], tokenizer.pad_token_id))
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                                  eos_token_id=[eos, *stop_ids],
                                  pad_token_id=tokenizer.pad_token_id)
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             synced_gpus=False)
        results += [cut_greedy(row, eos, stop_ids) for row in out[:, ids.shape[1]:].tolist()]
    model.train(was_training)
    return results


def cut_greedy(row: list[int], eos: int, stop_ids=()) -> list[int]:
    """A greedy row up to, not including, EOS, or through the first stop token."""
    for i, token in enumerate(row):
        if token == eos:
            return row[:i]
        if token in stop_ids:
            return row[:i + 1]
    return row

"""A faster, exact rollout engine: a shared prompt prefill and a decode loop that drops rows.

:class:`FastEngine` returns what :class:`~explorl.rollout.engine.HFEngine` returns (same layout,
same EOS set, same sampling distribution: ``softmax(top_p(logits / T))``) with less work:

* each distinct prompt is encoded once and its KV cache copied to its samples, where
  ``model.generate`` encodes every sample's copy of the prompt;
* the KV cache is allocated once per call, for the prompt and every new token
  (:class:`PreallocatedLayer`), where a dynamic cache concatenates at every step;
* a row that has emitted EOS leaves the decode batch (its cache rows and mask are dropped), so
  each step costs what the rows still running cost, where ``generate`` keeps decoding padding;
* only the last position's logits are computed, and the loop has none of ``generate``'s
  per-step processor and stopping-criteria machinery.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from explorl.batch import Rollout
from explorl.models.policy import positions
from explorl.rollout.captured import CapturedDecode
from explorl.rollout.engine import (
    completion_mask_from,
    cut_greedy,
    eos_token_ids,
    left_pad,
    right_pad_cat,
)

# Picks each running row's next token from its float32 logits [rows, V]; ``alive`` holds the
# rows' indices in the batch and ``step`` the index of the token being chosen.
Choose = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with the tokens outside each row's nucleus set to ``-inf``, as transformers'
    ``TopPLogitsWarper`` does: sort ascending, drop the tokens whose cumulative probability is
    at most ``1 - top_p``, always keep the most likely one. ``top_p >= 1`` keeps all."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
    remove[..., -1] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def distinct_prompts(rows: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts among ``rows``, in order of first use, and each row's index
    among them."""
    index: dict[tuple[int, ...], int] = {}
    which = [index.setdefault(tuple(p), len(index)) for p in rows]
    return [list(p) for p in index], which


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose key/value buffers are allocated once, for the prompt
    and every new token: a decode step writes its token into them where ``DynamicLayer``
    concatenates (copying the whole cache, every layer, every step). It returns views of the
    filled part, the same tensors ``DynamicLayer`` would return."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.device, self.is_initialized, self.length = keys.device, True, keys.shape[-2]
        rows, heads, _, dim = keys.shape
        self.key_buffer = keys.new_empty(rows, heads, capacity, dim)
        self.value_buffer = values.new_empty(rows, heads, capacity, dim)
        self.key_buffer[:, :, :self.length] = keys
        self.value_buffer[:, :, :self.length] = values
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (ascending), moved to the front of the same buffers."""
        kept, filled = len(indices), self.length
        self.key_buffer[:kept, :, :filled] = self.key_buffer[indices, :, :filled]
        self.value_buffer[:kept, :, :filled] = self.value_buffer[indices, :, :filled]
        self.key_buffer, self.value_buffer = self.key_buffer[:kept], self.value_buffer[:kept]
        self._views()


def filled(layer: DynamicLayer) -> bool:
    """Whether the layer holds keys (``is_initialized`` from transformers 4.57; before it, keys
    stay None until the first update)."""
    return getattr(layer, "is_initialized", layer.keys is not None)


def preallocate(cache: DynamicCache, capacity: int) -> None:
    """Swap each full-attention layer of ``cache`` for a :class:`PreallocatedLayer` of
    ``capacity`` positions holding the same keys and values (sliding-window and other layers
    stay as they are)."""
    cache.layers = [PreallocatedLayer(layer.keys, layer.values, capacity)
                    if type(layer) is DynamicLayer and filled(layer) else layer
                    for layer in cache.layers]


def cache_kwarg(model) -> str:
    """The forward keyword that takes the KV cache: ``cache`` in newer transformers (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class FastEngine:
    """Sampling with a shared prompt prefill and a hand-written KV-cache decode loop.

    The same protocol, arguments and output as :class:`~explorl.rollout.engine.HFEngine`:
    ``top_p`` (default 1.0: off), ``generation_batch_size`` rows sampled at a time (default 0:
    all at once), ``greedy_batch_size`` prompts decoded greedily at a time (default 256).
    Its rollouts carry ``sampling_logps``: the log-prob of each sampled token under the
    distribution it was drawn from, ``softmax(logits / T)`` (the one ``completion_logprobs``
    computes) within the top-p nucleus when ``top_p < 1``, 0 at padding. With
    ``compile_decode=True`` (default False) the decode step is compiled over a static cache
    (:mod:`explorl.rollout.captured`; a CUDA graph on a GPU): the same tokens from the same
    logits, finished rows kept in the batch.
    """

    gives_sampling_logps = True

    def __init__(self, model, tokenizer, top_p: float = 1.0, generation_batch_size: int = 0,
                 greedy_batch_size: int = 256, compile_decode: bool = False):
        self.model, self.tokenizer, self.top_p = model, tokenizer, top_p
        self.generation_batch_size = generation_batch_size
        self.greedy_batch_size = greedy_batch_size
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.captured = CapturedDecode(model, cache_kwarg(model)) if compile_decode else None

    def generate(self, prompts, num_samples, temperatures, max_new_tokens,
                 stop_ids=()) -> Rollout:
        if not sum(num_samples):
            return Rollout.empty()
        stops = self.eos_ids + list(stop_ids)
        groups = [g for g, n in enumerate(num_samples) for _ in range(n)]
        rows = [prompts[g] for g in groups]
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad(rows, pad)
        temperature = torch.tensor([float(temperatures[g]) for g in groups])
        chunk = self.generation_batch_size or len(rows)
        outs, logps = [], []
        for s in range(0, len(rows), chunk):
            ids, lp = self._sample(rows[s:s + chunk], temperature[s:s + chunk], max_new_tokens,
                                   stops)
            outs.append(ids)
            logps.append(lp)
        completion_ids = right_pad_cat(outs, pad)
        completion_mask, truncated = completion_mask_from(completion_ids, stops)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, pad)
        # 0 after EOS, where a captured decode keeps sampling
        sampling_logps = right_pad_cat(logps, 0.0) * completion_mask
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                       torch.tensor(groups, dtype=torch.long), truncated,
                       sampling_logps).to(self.model.device)

    def _sample(self, rows: list[list[int]], temperature: torch.Tensor, max_new_tokens: int,
                stops: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Completions [n, steps] (pad after EOS) of the prompts ``rows`` and their sampled
        log-probs [n, steps], on the model's device."""
        distinct, which = distinct_prompts(rows)
        device = self.model.device
        temps = temperature.to(device).view(-1, 1)
        logps = torch.zeros(len(rows), max_new_tokens, device=device)
        top_p = self.top_p

        def choose(logits, alive, step):
            sampled_from = top_p_filter(logits / temps[alive], top_p)
            token = torch.multinomial(sampled_from.softmax(-1), 1)
            logps[alive, step] = sampled_from.log_softmax(-1).gather(-1, token).squeeze(-1)
            return token.squeeze(-1)

        ids = self._decode(distinct, which, max_new_tokens, stops, choose)
        # Copied out of inference mode: inference tensors cannot enter autograd later
        return ids.clone(), logps[:, :ids.shape[1]].clone()

    def greedy(self, prompts: list[list[int]], max_new_tokens: int,
               stop_ids=()) -> list[list[int]]:
        """Greedy completions (token ids up to, not including, EOS; through the first of
        ``stop_ids``), as :func:`explorl.rollout.engine.greedy` gives them: only the
        tokenizer's EOS stops."""
        eos = self.tokenizer.eos_token_id
        results: list[list[int]] = []
        for s in range(0, len(prompts), self.greedy_batch_size):
            batch = prompts[s:s + self.greedy_batch_size]
            ids = self._decode(batch, list(range(len(batch))), max_new_tokens,
                               [eos, *stop_ids], lambda logits, alive, step: logits.argmax(-1))
            results += [cut_greedy(row, eos, stop_ids) for row in ids.tolist()]
        return results

    def _decode(self, prompts: list[list[int]], rows: list[int], max_new_tokens: int,
                eos_ids: list[int], choose: Choose) -> torch.Tensor:
        """Token ids [len(rows), steps] on the model's device, row i continuing
        ``prompts[rows[i]]``, pad after a row's EOS; ``steps`` is the longest row's length."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                loop = self._captured_loop if self.captured else self._decode_loop
                return loop(prompts, rows, max_new_tokens, eos_ids, choose)
        finally:
            model.train(was_training)

    def _prefill(self, prompts: list[list[int]], rows: list[int], capacity: int | None):
        """Encode each prompt once; return the cache (one row per sample, preallocated to
        ``capacity`` positions unless None), the forward keywords of a decode step, the
        samples' attention mask and the logits of their first token."""
        model, device = self.model, self.model.device
        ids, mask = (t.to(device) for t in left_pad(prompts, self.tokenizer.pad_token_id))
        cache = DynamicCache(config=model.config)
        step_kwargs = {cache_kwarg(model): cache, "use_cache": True, "logits_to_keep": 1}
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                       **step_kwargs).logits
        index = torch.tensor(rows, device=device)
        if rows != list(range(len(prompts))):  # samples continue their prompt's cache
            cache.batch_select_indices(index)
        if capacity is not None:
            preallocate(cache, capacity)
        return cache, step_kwargs, mask[index], logits[index, -1].float()

    def _decode_loop(self, prompts, rows, max_new_tokens, eos_ids, choose) -> torch.Tensor:
        device = self.model.device
        cache, step_kwargs, mask, logits = self._prefill(
            prompts, rows, max(len(p) for p in prompts) + max_new_tokens)
        position = mask.sum(-1)  # the next token's position: padding is skipped
        out = torch.full((len(rows), max_new_tokens), self.tokenizer.pad_token_id, device=device)
        alive = torch.arange(len(rows), device=device)  # rows still decoding
        eos = torch.tensor(eos_ids, device=device)
        for step in range(max_new_tokens):
            token = choose(logits, alive, step)
            out[alive, step] = token
            running = ~torch.isin(token, eos)
            if step + 1 == max_new_tokens or not running.any():
                return out[:, :step + 1]
            if not running.all():  # drop finished rows: later steps cost less
                keep = running.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, token, mask, position = (t[keep] for t in (alive, token, mask, position))
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            logits = self.model(input_ids=token[:, None], attention_mask=mask,
                                position_ids=position[:, None], **step_kwargs).logits[:, -1]
            logits, position = logits.float(), position + 1
        return out[:, :0]  # max_new_tokens == 0

    def _captured_loop(self, prompts, rows, max_new_tokens, eos_ids, choose) -> torch.Tensor:
        """The decode loop over the captured step: static shapes, so a row that has finished
        stays in the batch, fed padding, until every row is done."""
        capacity = max(len(p) for p in prompts) + max_new_tokens
        cache, _, mask, logits = self._prefill(prompts, rows, None)
        self.captured.start(cache, mask, capacity)
        device, pad = self.model.device, self.tokenizer.pad_token_id
        position = mask.sum(-1)
        out = torch.full((len(rows), max_new_tokens), pad, device=device)
        every = torch.arange(len(rows), device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        eos = torch.tensor(eos_ids, device=device)
        for step in range(max_new_tokens):
            token = choose(logits, every, step).masked_fill(done, pad)
            out[:, step] = token
            done |= torch.isin(token, eos)
            if step + 1 == max_new_tokens or done.all():
                return out[:, :step + 1]
            logits, position = self.captured.step(token, position), position + 1
        return out[:, :0]  # max_new_tokens == 0

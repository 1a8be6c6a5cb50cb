"""The fast engine's decode step, captured: one compiled forward over a static KV cache.

A decode step of :class:`~explorl.rollout.fast.FastEngine` is one token per row through the
whole model: dozens of small kernels whose launch and Python cost, not arithmetic, bound it at
small batch sizes. Here the step has static shapes (``rows x capacity`` cache buffers written
in place at a slot held in a tensor, the attention mask prepared outside the model), so
``torch.compile`` traces it once per shape: inductor fuses its kernels (on the CPU through the C
compiler), and on CUDA the ``reduce-overhead`` mode replays it as a CUDA graph.

What static shapes cost: finished rows stay in the batch until every row is done (their tokens
are discarded), and attention reads the whole buffer, the unfilled part masked. Rows are padded
to a multiple of 8 and the capacity to a multiple of 64 so that a run compiles few shapes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from explorl.errors import UserError

ROWS_MULTIPLE, CAPACITY_MULTIPLE = 8, 64


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class SlotLayer(DynamicLayer):
    """A full-attention cache layer of fixed ``[rows, heads, capacity, dim]`` buffers: a step
    writes its keys and values at ``slot`` (a one-element tensor shared by every layer and moved
    outside the compiled step) and attends over the whole buffer."""

    def __init__(self, like: DynamicLayer, rows: int, capacity: int, slot: torch.Tensor):
        super().__init__()
        self.device, self.is_initialized, self.slot = like.keys.device, True, slot
        _, heads, _, dim = like.keys.shape
        self.keys = like.keys.new_zeros(rows, heads, capacity, dim)
        self.values = like.values.new_zeros(rows, heads, capacity, like.values.shape[-1])
        self.capacity = capacity

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """The prefill's keys and values into the first rows and positions (what lies beyond
        them is masked)."""
        n, _, length, _ = keys.shape
        self.keys[:n, :, :length], self.values[:n, :, :length] = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys.index_copy_(2, self.slot, key_states)
        self.values.index_copy_(2, self.slot, value_states)
        return self.keys, self.values

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.capacity

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.capacity, 0


class CapturedDecode:
    """The compiled decode step of ``model``, over static buffers kept per shape (at most
    ``MAX_SHAPES``; each is compiled once and reused by later calls of the same shape).

    ``start(cache, mask, capacity)`` loads the prefill's dynamic cache (one row per sample) and
    attention mask; ``step(token, position)`` feeds each row's token at its position and returns
    the last logits [rows, V] in float32. The mask grows by one filled column a step."""

    MAX_SHAPES = 4

    def __init__(self, model, cache_kwarg: str):
        kinds = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:  # one prepared mask serves every layer
            raise UserError(f"compile_decode: full-attention models only; this one has "
                            f"{', '.join(sorted(kinds - {'full_attention'}))} layers")
        self.model, self.cache_kwarg = model, cache_kwarg
        self.eager_attention = getattr(model.config, "_attn_implementation", "") == "eager"
        mode = "reduce-overhead" if model.device.type == "cuda" else "default"
        self.forward = torch.compile(self._forward, mode=mode, dynamic=False)
        self.shapes: dict[tuple[int, int], tuple] = {}

    def _forward(self, token, position, mask, cache):
        if self.eager_attention:  # eager attention adds its mask; SDPA takes booleans
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=mask.device
                               ).masked_fill(~mask, torch.finfo(self.model.dtype).min)
        return self.model(input_ids=token, attention_mask={"full_attention": mask},
                          position_ids=position, use_cache=True, logits_to_keep=1,
                          **{self.cache_kwarg: cache}).logits[:, -1].float()

    def _buffers(self, like: DynamicCache, rows: int, capacity: int, device) -> tuple:
        slot = torch.zeros(1, dtype=torch.long, device=device)
        cache = DynamicCache(config=self.model.config)
        cache.layers = [SlotLayer(layer, rows, capacity, slot) for layer in like.layers]
        mask = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
        tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        if device.type == "cuda":  # fixed addresses: the graph is replayed, not re-recorded
            for t in (slot, mask, tokens, positions,
                      *(x for layer in cache.layers for x in (layer.keys, layer.values))):
                torch._dynamo.mark_static_address(t)
        if len(self.shapes) >= self.MAX_SHAPES:
            self.shapes.pop(next(iter(self.shapes)))
        return cache, mask, slot, tokens, positions

    def start(self, cache: DynamicCache, mask: torch.Tensor, capacity: int) -> None:
        n, width = mask.shape
        shape = (round_up(n, ROWS_MULTIPLE), round_up(capacity, CAPACITY_MULTIPLE))
        if shape not in self.shapes:
            self.shapes[shape] = self._buffers(cache, *shape, mask.device)
        self.cache, self.mask, self.slot, self.tokens, self.positions = self.shapes[shape]
        for layer, prefill in zip(self.cache.layers, cache.layers):
            layer.load(prefill.keys, prefill.values)
        self.mask.zero_()
        self.mask[:n, :width] = mask.bool()
        self.mask[n:, 0] = True  # padding rows attend somewhere: no row all masked
        self.slot.fill_(width)
        self.tokens.zero_()
        self.positions.zero_()

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        n = len(token)
        self.mask.index_fill_(1, self.slot, True)
        self.tokens[:n, 0], self.positions[:n, 0] = token, position
        logits = self.forward(self.tokens, self.positions, self.mask[:, None, None, :],
                              self.cache)
        self.slot.add_(1)
        return logits[:n].clone()

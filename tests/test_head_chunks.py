"""The LM head in chunks: the same log-probs, entropies and gradients as the whole-vocabulary
path, without ever holding ``[rows, tokens, vocab]``; and the update's micro-batches, cut to
their own length."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from explorl.models.head import chunkable_head
from explorl.models.logprobs import micro_batches
from explorl.models.policy import completion_logprobs
from explorl.rollout.engine import Rollout

VOCAB = 1000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def batch():
    """4 rows: left-padded prompts, completions of 7, 4, 1 and 7 tokens, four temperatures."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, VOCAB, (4, 5), generator=g)
    prompt_mask = torch.ones(4, 5, dtype=torch.long)
    prompt_mask[0, :2] = 0
    completion = torch.randint(2, VOCAB, (4, 7), generator=g)
    completion_mask = torch.ones(4, 7, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[2, 1:] = 0
    return prompt, prompt_mask, completion, completion_mask, torch.tensor([1.0, 0.7, 1.3, 2.0])


def stats_and_grads(model, chunk_size: int):
    model.zero_grad(set_to_none=True)
    inputs = batch()
    stats = completion_logprobs(model, *inputs, with_entropy="grad", entropy_at_one=True,
                                chunk_size=chunk_size)
    mask = inputs[3].float()
    # a loss with both signs, through the log-probs and the entropy
    weights = torch.linspace(-1, 1, mask.numel()).view_as(mask)
    ((stats.logps * weights + 0.3 * stats.entropy) * mask).sum().backward()
    return stats, {n: p.grad.clone() for n, p in model.named_parameters()}, mask.bool()


def test_chunks_give_the_whole_vocabulary_values_and_gradients(model):
    (plain, plain_grads, mask), (chunked, grads, _) = (stats_and_grads(model, 0),
                                                       stats_and_grads(model, 3))
    # float32, the same sums in another order: a few epsilons of quantities of size <= 10
    for a, b in zip(plain[:3], chunked[:3]):
        torch.testing.assert_close(b[mask], a[mask], rtol=0, atol=1e-5)
        assert torch.equal(b[~mask], torch.zeros_like(b[~mask]))  # padding is skipped
    for name, g in plain_grads.items():
        assert float((grads[name] - g).norm()) <= 1e-5 * float(g.norm()), name


def test_a_chunk_holds_at_most_its_own_logits(model):
    """No tensor kept for the backward pass spans more than one chunk of the vocabulary."""
    largest = []

    def pack(t):
        largest.append(t.numel() if t.shape and t.shape[-1] == VOCAB else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stats_and_grads(model, 3)
    with_chunks = max(largest)
    largest.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stats_and_grads(model, 0)
    assert with_chunks <= 3 * VOCAB < max(largest)  # the plain path keeps [4, 7, V]


def test_a_hooked_head_takes_the_plain_path(model):
    assert chunkable_head(model) is model.lm_head
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out)
    try:
        assert chunkable_head(model) is None
    finally:
        handle.remove()
    model.config.final_logit_softcapping = 30.0
    try:
        assert chunkable_head(model) is None
    finally:
        model.config.final_logit_softcapping = None


def test_micro_batches_sort_by_length_and_respect_both_limits():
    prompts, completions = [2, 20, 4, 20, 3, 4], [3, 10, 4, 10, 3, 3]  # rows of 5, 30, 8, ...
    assert micro_batches(prompts, completions) == [[1, 3, 2, 5, 4, 0]]  # longest first
    assert micro_batches(prompts, completions, size=4) == [[1, 3, 2, 5], [4, 0]]
    # 60 padded tokens: two rows of 30; then 8, 7, 6, 5 fit as 4 x (4 + 4) = 32
    assert micro_batches(prompts, completions, tokens=60) == [[1, 3], [2, 5, 4, 0]]
    assert micro_batches(prompts, completions, size=3, tokens=20) == [[1], [3], [2, 5],
                                                                      [4, 0]]
    assert micro_batches([40], [10], tokens=10) == [[0]]  # longer than the budget: alone
    assert micro_batches([], []) == []


def test_a_chunk_is_padded_to_its_longest_prompt_plus_its_longest_completion():
    """Rows of (100 prompt, 10 completion) and (10, 100) are 110 tokens each, but cut to one
    chunk they pad to 2 x 200: a budget of 220 keeps them apart."""
    assert micro_batches([100, 10], [10, 100], tokens=220) == [[0], [1]]
    assert micro_batches([100, 10], [10, 100], tokens=400) == [[0, 1]]


def test_trimmed_drops_columns_that_are_padding_everywhere():
    prompt_ids = torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7]])
    prompt_mask = (prompt_ids != 0).long()
    completion_ids = torch.tensor([[8, 9, 0, 0], [3, 0, 0, 0]])
    completion_mask = (completion_ids != 0).long()
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                      torch.ones(2), torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool))
    cut = rollout.trimmed()
    assert cut.prompt_ids.tolist() == [[5, 6], [0, 7]]
    assert cut.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert cut.completion_ids.tolist() == [[8, 9], [3, 0]]
    assert cut.completion_mask.tolist() == [[1, 1], [1, 0]]


def test_chunks_gather_a_support_and_a_top_k_as_the_whole_vocabulary_does(model):
    """The teacher's top-K ids and log-probs, and the student's log-probs at given ids (with
    their gradient), are the same in chunks as over the whole vocabulary at once."""
    inputs = batch()
    mask = inputs[3].bool()
    top = [completion_logprobs(model, *inputs, with_entropy=False, chunk_size=c,
                               support=5).support for c in (0, 3)]
    torch.testing.assert_close(top[1][mask], top[0][mask], rtol=0, atol=1e-5)
    ids = top[0][..., :5].round().long()
    grads, gathered = [], []
    for c in (0, 3):
        model.zero_grad(set_to_none=True)
        out = completion_logprobs(model, *inputs, with_entropy=False, chunk_size=c,
                                  support=ids).support
        (out * mask.unsqueeze(-1)).sum().backward()
        gathered.append(out)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(gathered[1][mask], gathered[0][mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(gathered[0][mask], top[0][..., 5:][mask], rtol=0, atol=1e-5)
    for name, g in grads[0].items():
        assert float((grads[1][name] - g).norm()) <= 1e-5 * float(g.norm()), name

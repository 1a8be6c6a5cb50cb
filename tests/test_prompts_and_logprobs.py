"""Chat templates, and log-probs/entropy taken at each sample's own temperature."""

import torch

from explorl.data.prompts import PromptCodec
from explorl.models.policy import completion_logprobs
from explorl.models.tiny import char_tokenizer, tiny_config

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_plain_prompt_without_template_is_kept():
    codec = PromptCodec(char_tokenizer())
    assert codec.text("12+3=") == "12+3="
    assert codec.completion("12+3=", "15") == "15"
    # conversational prompt and no template: message contents joined
    assert codec.text([{"role": "user", "content": "hi"}]) == "hi"


def test_template_applied_to_plain_and_conversational_prompts():
    tok = char_tokenizer()
    tok.chat_template = TEMPLATE
    codec = PromptCodec(tok)
    assert codec.text("12+3=") == "<user>12+3=\n<assistant>"
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="}]
    assert codec.text(msgs) == "<system>be brief\n<user>1+1=\n<assistant>"
    assert codec.completion(msgs, "2") == [{"role": "assistant", "content": "2"}]
    assert PromptCodec(tok, mode="never").text("12+3=") == "12+3="


def test_long_prompts_keep_their_end():
    codec = PromptCodec(char_tokenizer(), max_prompt_length=4)
    ids = codec.encode("123456=")
    assert codec.tokenizer.decode(ids) == "456="


def test_logprobs_and_entropy_use_each_rows_temperature():
    torch.manual_seed(0)
    tok = char_tokenizer()
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(tiny_config(len(tok), hidden=32, layers=1)).eval()
    prompt = torch.tensor([[0, 5, 6], [4, 5, 6]])  # first row left-padded
    pmask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    comp = torch.tensor([[7, 8], [9, 1]])
    cmask = torch.ones_like(comp)
    temps = torch.tensor([0.5, 2.0])
    logps, ent, _, _ = completion_logprobs(model, prompt, pmask, comp, cmask, temps)
    for i in range(2):  # the same row alone, unpadded, by hand
        keep = pmask[i].bool()
        ids = torch.cat([prompt[i][keep], comp[i]]).unsqueeze(0)
        logits = model(ids).logits[0, keep.sum() - 1:-1] / temps[i]
        want = torch.log_softmax(logits, -1)
        assert torch.allclose(logps[i], want.gather(-1, comp[i].unsqueeze(-1)).squeeze(-1),
                              atol=1e-5)
        assert torch.allclose(ent[i], -(want.exp() * want).sum(-1), atol=1e-5)


def test_shipped_tokenizer_keeps_whitespace_and_round_trips():
    """The shipped tokenizer must load as saved (not rebuilt as the architecture's tokenizer):
    the rubric task's prompts have spaces and newlines."""
    from explorl.models.policy import load_tokenizer
    from explorl.models.tiny import char_tokenizer

    text = "revise [a] 4 digits, has 7\nmet: 4 digits\nfix:"
    loaded, built = load_tokenizer("tiny"), char_tokenizer()
    ids = loaded(text, add_special_tokens=False).input_ids
    assert ids == built(text, add_special_tokens=False).input_ids and len(ids) == len(text)
    assert loaded.decode(ids) == text

"""A chat template in the Hermes/Qwen manner (tools listed in a system turn, calls as
``<tool_call>`` JSON, each tool answer a ``<tool_response>`` in a user turn, turns ended by the
EOS token), and a byte-level BPE tokenizer whose EOS is one special token, ``<|im_end|>``, as a
chat model's is: what the ``hermes`` call format meets in the wild, built offline."""

from __future__ import annotations

TEMPLATE = """\
{%- if tools -%}
<|im_start|>system
Tools you may call, one JSON object each:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Call one as <tool_call>{"name": ..., "arguments": {...}}</tool_call>{{ eos_token }}
{% endif -%}
{%- for message in messages -%}
{%- if message.role == "tool" -%}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response>{{ eos_token }}
{% else -%}
<|im_start|>{{ message.role }}
{{ message.content }}{{ eos_token }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}"""

# the same, naming the tools in a line: short enough for the tiny model's 256 positions
NAMES_ONLY = """\
{%- if tools -%}
<|im_start|>system
tools: {{ tools | map(attribute="function.name") | join(", ") }}{{ eos_token }}
{% endif -%}
""" + TEMPLATE[TEMPLATE.index("{%- for message"):]

CORPUS = ["<|im_start|>user\n12*7=<|im_end|>\n<|im_start|>assistant\n",
          '<tool_call>{"name": "calc", "arguments": {"expression": "12*7"}}</tool_call>',
          "<tool_response>\n84\n</tool_response> the answer is 84, 0123456789 +-*= "
          "Tools you may call, one JSON object each: function description parameters "
          "properties required type string object expression Evaluates an arithmetic"]


def with_template(tokenizer, template: str = TEMPLATE):
    """``tokenizer`` with a template above."""
    tokenizer.chat_template = template
    return tokenizer


def bpe_tokenizer():
    """A byte-level BPE tokenizer (vocabulary 400) with ``<|im_end|>`` as its EOS and
    ``<tool_call>``, ``</tool_call>`` as added (not special) tokens, as Qwen2.5 has them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|im_end|>", "<|im_start|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>",
                                        pad_token="<|pad|>")
    tokenizer.add_tokens(["<tool_call>", "</tool_call>"])
    return with_template(tokenizer)

"""How a model writes a tool call and reads its answer.

``tagged`` (for the shipped character-level model): the model writes ``[name:argument]``, the
``]`` ends its turn, and the tool's answer follows as ``answer`` and a newline; the argument goes
to the tool's first parameter. A turn that ends without the closing ``]`` (at EOS) calls nothing;
one that ends with it but is not ``[name:argument]`` is a malformed call, answered with an error
observation.

``hermes`` (chat models: Hermes, Qwen2.5, Qwen3 and the templates that copy them): the model ends
its turn (EOS) after one or more ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
blocks; the answers are the ``tool`` messages as the model's own chat template renders them,
followed by its generation prompt, so the episode reads exactly as the template would render
the conversation. A block that is not such JSON is a malformed call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from explorl.errors import UserError

TAGGED = re.compile(r"\[([A-Za-z_][A-Za-z0-9_]*):([^\[\]]*)\]$")
HERMES = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass
class Call:
    """A parsed call: the tool's name and its arguments (keywords, or a string: the first
    parameter's)."""

    name: str
    arguments: dict | str


class TaggedFormat:
    """``[name:argument]`` calls, answers as ``text`` + newline (module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        ids = tokenizer("]", add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise UserError("tool_call_format: tagged needs ']' to be one token of the "
                            "model's tokenizer")
        self.stop_ids = (ids[0],)

    def calls(self, turn: list[int], text: str, complete: bool) -> list[Call | None] | None:
        """The calls a turn makes (None where malformed), or None when it calls nothing; a
        call closes the turn."""
        if not (complete and turn and turn[-1] in self.stop_ids):
            return None
        match = TAGGED.search(text)
        return [None if match is None else Call(match.group(1), match.group(2))]

    def answer(self, results: list[tuple[str, str]]) -> list[int]:
        """The tokens that carry the tools' answers (``(name, text)``) back to the model."""
        return self.tokenizer("".join(f"{text}\n" for _, text in results),
                              add_special_tokens=False).input_ids


class HermesFormat:
    """``<tool_call>`` JSON blocks before EOS, answers rendered by the chat template (module
    docstring)."""

    stop_ids = ()  # a turn with calls ends at EOS, as the template ends an assistant turn

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("tool_call_format: hermes renders the tools' answers with the "
                            "model's chat template, and its tokenizer has none")
        # a conversation up to an assistant turn's EOS, whose rendering every answer extends
        self.turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "."}]
        before = tokenizer.apply_chat_template(self.turn, tokenize=False)
        end = before.rfind(tokenizer.eos_token) if tokenizer.eos_token else -1
        self.head = before[:end + len(tokenizer.eos_token)] if end >= 0 else None
        self.answer([])  # the template is checked once, here

    def calls(self, turn: list[int], text: str, complete: bool) -> list[Call | None] | None:
        """As :meth:`TaggedFormat.calls`; ``text`` keeps special tokens (tags may be ones)."""
        opened = text.count("<tool_call>")
        if not (complete and opened):
            return None
        blocks = [parse_json_call(body) for body in HERMES.findall(text)]
        return blocks + [None] * (opened - len(blocks))  # an unclosed block: malformed

    def answer(self, results: list[tuple[str, str]]) -> list[int]:
        """What the template writes after an assistant turn's EOS: the ``tool`` messages and
        the next generation prompt, as tokens."""
        tok = self.tokenizer
        after = tok.apply_chat_template(
            self.turn + [{"role": "tool", "name": name, "content": text}
                         for name, text in results],
            tokenize=False, add_generation_prompt=True)
        if self.head is None or not after.startswith(self.head):
            raise UserError("tool_call_format: hermes needs a chat template that ends an "
                            f"assistant turn with the EOS token ({tok.eos_token!r}) and renders "
                            "tool messages after it")
        return tok(after[len(self.head):], add_special_tokens=False).input_ids


def parse_json_call(body: str) -> Call | None:
    """``{"name": ..., "arguments": {...}}`` (arguments may also be a JSON string), or None."""
    try:
        call = json.loads(body)
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
    except (ValueError, AttributeError):
        return None
    name = call.get("name")
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return Call(name, arguments)


FORMATS = {"tagged": TaggedFormat, "hermes": HermesFormat}

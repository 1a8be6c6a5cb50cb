"""How a model writes a tool call and reads its answer.

``tagged`` (for the shipped character-level model): the model writes ``[name:argument]``, the
``]`` ends its turn, and the tool's answer follows as ``answer`` and a newline; the argument goes
to the tool's first parameter. A turn that ends without the closing ``]`` (at EOS) calls nothing;
one that ends with it but is not ``[name:argument]`` is a malformed call, answered with an error
observation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from explorl.errors import UserError

TAGGED = re.compile(r"\[([A-Za-z_][A-Za-z0-9_]*):([^\[\]]*)\]$")


@dataclass
class Call:
    """A parsed call: the tool's name and its arguments (a string: the first parameter's)."""

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

    def ends_call(self, turn: list[int]) -> bool:
        """Whether the model's turn ended by closing a call."""
        return bool(turn) and turn[-1] in self.stop_ids

    def parse(self, text: str) -> Call | None:
        """The call that ends ``text`` (a turn ending with ``]``), or None if malformed."""
        match = TAGGED.search(text)
        return None if match is None else Call(match.group(1), match.group(2))

    def answer(self, results: list[str]) -> list[int]:
        """The tokens that carry the tools' answers back to the model."""
        return self.tokenizer("".join(f"{r}\n" for r in results),
                              add_special_tokens=False).input_ids


FORMATS = {"tagged": TaggedFormat}

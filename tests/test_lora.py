import pytest
import torch

pytest.importorskip("peft")

from explorl.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from explorl.errors import UserError  # noqa: E402
from explorl.models.lora import (  # noqa: E402 - after the skip on a missing package
    ADAPTER_WEIGHTS,
    adapters_disabled,
    apply_lora,
    is_lora,
    load_adapter_weights,
    load_lora,
    merge_lora,
    save_adapter,
    trainable_parameters,
)
from explorl.models.policy import completion_logprobs, load_model, load_tokenizer  # noqa: E402

TARGETS = ["q_proj", "v_proj"]
# peft asks transformers an old-named question; the warning is theirs, not ours
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


def batch(tokenizer):
    ids = tokenizer(["12+34=", "7*8=", "99-1="], padding=True, return_tensors="pt")
    completion = tokenizer(["46", "56", "98"], return_tensors="pt").input_ids
    return ids.input_ids, ids.attention_mask, completion, torch.ones_like(completion)


def logps(model, inputs):
    return completion_logprobs(model, *inputs, torch.ones(3), with_entropy=False).logps


def step(model, inputs, lr=0.1):
    torch.manual_seed(0)
    opt = torch.optim.SGD(trainable_parameters(model), lr=lr)
    (-logps(model, inputs).mean()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.fixture
def tokenizer():
    return load_tokenizer("tiny")


def lora_model(**kwargs):
    return apply_lora(load_model("tiny"), **{"r": 4, "alpha": 8, "target_modules": TARGETS,
                                             **kwargs})


def test_only_lora_parameters_train(tokenizer):
    model = lora_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable)
    assert not any("k_proj" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(model, batch(tokenizer))
    step(model, batch(tokenizer))  # B starts at zero: A gets a gradient from the second step
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_A" in n for n in changed)


def test_fresh_adapters_compute_the_base_model(tokenizer):
    inputs = batch(tokenizer)
    base = load_model("tiny")
    model = lora_model(target_modules="all-linear")
    assert torch.allclose(logps(model, inputs), logps(base, inputs), atol=1e-5)
    step(model, inputs)
    assert not torch.allclose(logps(model, inputs), logps(base, inputs), atol=1e-3)
    with torch.no_grad(), adapters_disabled(model):
        assert torch.allclose(logps(model, inputs), logps(base, inputs), atol=1e-5)


def test_adapter_roundtrip_in_safetensors(tokenizer, tmp_path):
    inputs = batch(tokenizer)
    model = lora_model()
    step(model, inputs)
    save_adapter(model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {ADAPTER_WEIGHTS, "adapter_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    loaded = load_lora(load_model("tiny"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(logps(loaded, inputs), logps(model, inputs))
    again = lora_model()
    load_adapter_weights(again, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(logps(again, inputs), logps(model, inputs))


def test_merged_model_equals_adapted_model(tokenizer, tmp_path):
    inputs = batch(tokenizer)
    model = lora_model()
    step(model, inputs)
    with torch.no_grad():
        adapted = logps(model, inputs)
    merged = merge_lora(model)
    assert not is_lora(merged)
    merged.save_pretrained(tmp_path / "final", safe_serialization=True)
    reloaded = load_model(str(tmp_path / "final"))
    with torch.no_grad():
        assert torch.allclose(logps(reloaded, inputs), adapted, atol=1e-5)


def test_checkpoint_resume_restores_adapters(tokenizer, tmp_path):
    inputs = batch(tokenizer)
    model = lora_model()
    opt = torch.optim.AdamW(trainable_parameters(model), lr=0.01)
    (-logps(model, inputs).mean()).backward()
    opt.step()
    save_checkpoint(tmp_path, 1, model, tokenizer, opt.state_dict(), {"note": "x"}, keep=2)
    assert (tmp_path / "checkpoint-1" / ADAPTER_WEIGHTS).exists()
    fresh = lora_model()
    fresh_opt = torch.optim.AdamW(trainable_parameters(fresh), lr=0.01)
    state = load_checkpoint(tmp_path / "checkpoint-1", fresh, fresh_opt)
    assert state["step"] == 1 and state["note"] == "x"
    with torch.no_grad():
        assert torch.allclose(logps(fresh, inputs), logps(model, inputs))
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="lora_r"):
        apply_lora(load_model("tiny"), r=0)
    with pytest.raises(UserError, match="lora_target_modules"):
        apply_lora(load_model("tiny"), target_modules=["no_such_layer"])

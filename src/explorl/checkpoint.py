"""Checkpoints that resume a run exactly, written atomically, loaded without pickle.

A checkpoint is a folder ``checkpoint-<step>``: the model (``save_pretrained``, safetensors; a
LoRA model saves only its adapters, ``adapter_model.safetensors``), the optimizer's tensors
(``optimizer.safetensors``) and everything else as JSON (``state.json``: step, optimizer
hyper-parameters, RNG states, data position, trainer state). It is written into a temporary
folder and renamed into place, so a crash never leaves a half-written checkpoint that resume
would pick; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from explorl.errors import UserError

_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[int(x) if isinstance(x, (int, np.integer))
                                                     else float(x) for x in np_state[2:]]],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # sampling on a GPU draws from its own generator
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_state(sd: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """An optimizer state dict as JSON-able metadata and named tensors."""
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def optimizer_state_dict(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """The inverse of :func:`optimizer_state`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer_sd: dict,
                    trainer_state: dict, keep: int, model_state: dict | None = None,
                    extra_tensors: dict | None = None) -> Path:
    """``optimizer_sd`` is the optimizer's state dict; ``model_state`` the weights to save in
    place of the model's own (the gathered weights of a sharded model); ``extra_tensors`` any
    other tensors to resume (an algorithm's own models), in ``extra.safetensors``."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, step, model, tokenizer, optimizer_sd, trainer_state, model_state,
               extra_tensors)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never a half-written folder left to find
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, model, tokenizer, optimizer_sd: dict, trainer_state: dict,
           model_state: dict | None, extra_tensors: dict | None) -> None:
    tmp.mkdir(parents=True)
    if extra_tensors:
        save_file({k: v.contiguous() for k, v in extra_tensors.items()},
                  str(tmp / "extra.safetensors"))
    model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
    tokenizer.save_pretrained(tmp)
    opt_meta, tensors = optimizer_state(optimizer_sd)
    rng_meta, rng_tensors = rng_state()
    tensors.update(rng_tensors)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "rng": rng_meta, "trainer": trainer_state}
    (tmp / "state.json").write_text(json.dumps(state))
    _fsync_dir(tmp)


def save_final(run_dir: Path, model, tokenizer, summary: dict,
               model_state: dict | None = None, extra=None) -> None:
    """``final/`` (the model and its tokenizer, and whatever ``extra(folder)`` writes beside
    them) and ``summary.json``, each replaced whole."""
    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    tmp_summary = run_dir / ".summary.json.tmp"
    tmp_summary.write_text(json.dumps(summary, indent=2))
    os.replace(tmp_summary, run_dir / "summary.json")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are never listed)."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := _NAME.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model, optimizer, parallel=None) -> dict:
    """Load weights, optimizer and RNG state into place; return the trainer state. Under FSDP or
    DeepSpeed (``parallel.sharded``) the full weights and optimizer state are sharded into this
    process.

    A checkpoint that cannot be read (edited, truncated by a full disk, from another model)
    raises :class:`UserError` naming it, before anything is written."""
    try:
        return _load_checkpoint(path, model, optimizer, parallel)
    except Exception as e:  # noqa: BLE001 - any failure here means this folder is unusable
        reason = (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise UserError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: "
                        f"{reason}); delete it or run with resume=never") from None


def _load_checkpoint(path: Path, model, optimizer, parallel) -> dict:
    from safetensors.torch import load_model

    state = json.loads((path / "state.json").read_text())
    sharded = parallel is not None and parallel.sharded
    if sharded:
        weights = load_file(str(path / "model.safetensors"))
    elif (path / "adapter_model.safetensors").exists():  # a LoRA run saves only its adapters
        from explorl.models.lora import load_adapter_weights

        load_adapter_weights(model, path)
    else:
        load_model(model, str(path / "model.safetensors"), strict=False)
    tensors = load_file(str(path / "optimizer.safetensors"))
    optimizer_sd = optimizer_state_dict(state["optimizer"], tensors)
    if sharded:
        parallel.load_state(optimizer, weights, optimizer_sd)
    else:
        optimizer.load_state_dict(optimizer_sd)
    set_rng_state(state["rng"], tensors)
    extra = load_file(str(path / "extra.safetensors")) if (path / "extra.safetensors").exists() \
        else {}
    return {"step": state["step"], **state["trainer"], "tensors": extra}

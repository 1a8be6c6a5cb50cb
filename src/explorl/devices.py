"""Where a run computes: ``device=auto|cpu|cuda|cuda:N`` resolved against what this machine
has, and the settings a CUDA run turns on."""

from __future__ import annotations

import os

import torch

from explorl.errors import UserError


def resolve_device(spec: str, bf16: bool = False, distributed: bool = False) -> torch.device:
    """The device ``spec`` names on this machine; one line (exit code 2) when it has none.

    ``auto`` is the GPU when one is visible. Under a launcher (``distributed``) ``cuda`` means
    the GPU of this process's ``LOCAL_RANK``. On CUDA, float32 matmuls may use TF32 (10-bit
    mantissa inputs, float32 accumulation), as TRL and verl run by default."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device={spec}: no CUDA GPU is visible to torch {torch.__version__} "
                        "(use device=cpu or device=auto)")
    if ":" in spec and distributed:
        raise UserError(f"device={spec}: under a launcher every process takes the GPU of its "
                        "local rank; use device=cuda or device=auto")
    index = int(spec.partition(":")[2] or os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"device={spec}: GPU {index} asked for, {count} visible"
                        + (" (more processes than GPUs?)" if distributed else ""))
    if bf16 and not torch.cuda.is_bf16_supported():
        raise UserError(f"bf16: {torch.cuda.get_device_name(index)} has no bfloat16 support; "
                        "set bf16=false")
    torch.cuda.set_device(index)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda", index)

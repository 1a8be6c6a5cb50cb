"""Data parallelism across processes started by ``accelerate launch`` (or ``torchrun``).

Every process generates and scores a contiguous share of each request's prompts; the scored
shares are gathered once (:mod:`explorl.rollout.collect`), so advantages, HeRL's decisions,
controllers and metrics run on the whole batch, identically everywhere. Only the update is
sharded, by balanced rows; its loss is normalised by whole-batch counts and scaled by the number
of processes, so the gradient DDP averages is the gradient of the whole batch. A run in one
process creates no ``Accelerator`` and no collective: it is exactly what it was without this
module.

Under a DeepSpeed config (ZeRO stage 1 or 2) the optimizer state (and at stage 2 the gradients)
are partitioned by a DeepSpeed engine; every process keeps the full weights.

Under an FSDP config the model is sharded with FSDP2 (``fully_shard``: one unit per decoder
layer, then the root): parameters, gradients and optimizer state live in ``1/N`` shards. Rollouts,
evaluation and saving run under :meth:`Parallel.gathered`, which all-gathers the weights once, so
that processes may generate different numbers of tokens without a collective per token.
"""

from __future__ import annotations

import contextlib
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from explorl.errors import UserError


def world_size() -> int:
    """Processes in this run, as set by the launcher (1 when started directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Parallel:
    """Rank, world size and the few collectives the trainer needs; no-ops in one process."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.accelerator = None
        self.model = None  # the prepared (wrapped) model, set by ``prepare``
        self.rank, self.world = 0, 1
        self.fsdp = self.deepspeed = False
        if world_size() == 1:
            return
        self.fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        self.deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        if self.deepspeed:
            self.zero_stage = _zero_stage(cpu=device is None or device.type == "cpu")
        from accelerate import Accelerator

        # NCCL between GPUs (the process's GPU is set by devices.resolve_device), gloo on CPUs
        self.accelerator = Accelerator(cpu=device is None or device.type == "cpu")
        self.device_type = "cpu" if device is None else device.type
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def engine(self) -> str | None:
        """``FSDP``, ``DeepSpeed``, ``DDP``, or ``None`` in one process."""
        if self.world == 1:
            return None
        return "FSDP" if self.fsdp else "DeepSpeed" if self.deepspeed else "DDP"

    def refuse_unsupported(self, cfg) -> None:
        """One line for a configuration this process group cannot run."""
        if cfg.lora_r and self.engine in ("FSDP", "DeepSpeed"):
            raise UserError(f"lora_r: LoRA under {self.engine} is not supported; use DDP "
                            "(configs/accelerate/ddp_cpu.yaml)")
        if cfg.prompts_per_step * cfg.num_generations < self.world:
            raise UserError(f"prompts_per_step: {cfg.prompts_per_step} x {cfg.num_generations} "
                            f"samples leave some of the {self.world} processes no row to train")
        if cfg.bf16_weights and self.world > 1:
            raise UserError("bf16_weights: runs in one process; under a launcher use bf16=true "
                            "(float32 weights, bfloat16 autocast)")
        if cfg.uses("herl") and cfg.herl.guide_kind != "policy" and self.world > 1:
            raise UserError(f"herl.guide: {cfg.herl.guide_kind} (a copy of the model) runs in "
                            "one process; under a launcher use herl.guide=policy")
        if cfg.engine == "vllm" and self.world > 1:
            raise UserError("engine: vllm runs in one process here (one engine per process is "
                            "not tested); under a launcher use engine=fast")
        if cfg.uses("ppo") and self.world > 1:
            raise UserError("method: ppo runs in one process (its critic is not distributed); "
                            "start it without a launcher")

    @property
    def sharded(self) -> bool:
        """Whether checkpoints must be gathered and scattered through :meth:`optimizer_state`
        and :meth:`load_state`."""
        return self.fsdp or self.deepspeed

    def prepare(self, model: torch.nn.Module, make_optimizer, max_grad_norm: float):
        """The model to train through (DDP-wrapped, sharded in place under FSDP, or a DeepSpeed
        engine) and its optimizer, built by ``make_optimizer(model)``. A DeepSpeed engine clips
        gradients itself, hence ``max_grad_norm``."""
        if self.accelerator is None:
            self.model = model
            return model, make_optimizer(model)
        if self.deepspeed:
            import deepspeed

            config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                      "gradient_clipping": max_grad_norm,
                      "zero_optimization": {"stage": self.zero_stage}}
            self.model, optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=make_optimizer(model), config=config,
                dist_init_required=False)
            return self.model, optimizer
        if self.fsdp:  # the optimizer must see the sharded parameters
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # on the run's device: without a mesh FSDP takes a visible GPU even for device=cpu
            mesh = init_device_mesh(self.device_type, (self.world,))
            units = set(getattr(model, "_no_split_modules", None) or ())
            for module in model.modules():
                if type(module).__name__ in units:
                    fully_shard(module, mesh=mesh)
            self.model = fully_shard(model, mesh=mesh)
            return self.model, make_optimizer(self.model)
        self.model, optimizer = self.accelerator.prepare(model, make_optimizer(model))
        return self.model, optimizer

    @contextlib.contextmanager
    def gathered(self):
        """Full weights on every process for the duration (FSDP); a no-op otherwise. Every
        process must enter it: gathering is a collective. Inside, forward passes run no
        collectives, so processes may differ in how many they make."""
        if not self.fsdp:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        self.model.set_reshard_after_forward(False)  # and every unit below it
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
            self.model.set_reshard_after_forward(True)

    # --- checkpoints under FSDP and DeepSpeed: the whole state, in the single-process layout --
    def model_state(self) -> dict | None:
        """The full weights (FSDP, collective), or None: the model saves its own."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # Tied weights come out under each name; keep one, as the model itself saves them.
        own = {n for n, _ in self.model.named_parameters()} | {
            n for n, _ in self.model.named_buffers()}
        return {k: v for k, v in full.items() if k in own}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()``; under FSDP or DeepSpeed the full state (collective), keyed
        by parameter index as one process would key it, so checkpoints do not depend on how the
        run was sharded."""
        if self.deepspeed:
            return _zero_optimizer_state(self.model.module, optimizer)
        if not self.fsdp or not optimizer.state:
            # Before the first step there is nothing to gather (and gathering would create
            # Adam's state by a zero step, advancing its step count).
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        full = get_optimizer_state_dict(self.model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        index = {name: i for i, name in enumerate(self._names())}
        return {"state": {index[k]: v for k, v in full.get("state", {}).items()},
                "param_groups": [{**g, "params": [index[k] for k in g["params"]]}
                                 for g in full.get("param_groups", [])]}

    def load_state(self, optimizer: torch.optim.Optimizer, weights: dict,
                   optimizer_state: dict) -> None:
        """Shard a checkpoint's full weights and optimizer state into this process (FSDP,
        DeepSpeed)."""
        if self.deepspeed:
            _load_zero_state(self.model.module, optimizer, weights, optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.model, weights, options=options)
        if not optimizer_state["state"]:  # written before the first step
            return
        names = self._names()
        named = {"state": {names[i]: v for i, v in optimizer_state["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                  for g in optimizer_state["param_groups"]]}
        set_optimizer_state_dict(self.model, optimizer, named, options=options)

    def _names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters()]

    def share(self, n: int) -> slice:
        """This process's contiguous, balanced share of ``n`` items (sizes differ by at most
        one, earlier processes take the extra ones)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def seed_step(self, seed: int, step: int, shared: random.Random | None = None) -> None:
        """Seed this step's sampling from (seed, step, rank): processes draw different samples,
        and a resumed run draws what the uninterrupted one would have. ``shared`` (HeRL's slot
        choices, made on the whole batch) gets the same seed on every process."""
        if self.world == 1:
            return
        value = int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1)[0])
        torch.manual_seed(value)
        if shared is not None:
            shared.seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        """Backward of this process's share of the loss; gradients are synchronised on the
        ``last`` micro-batch only."""
        if self.accelerator is None:
            loss.backward()
            return
        if self.fsdp:  # gradients are reduce-scattered (averaged) in every backward
            (loss * self.world).backward()
            return
        if self.deepspeed:  # the engine averages gradients over processes too
            self.model.set_gradient_accumulation_boundary(last)
            self.model.backward(loss * self.world)
            return
        acc = self.accelerator
        with contextlib.nullcontext() if last else acc.no_sync(self.model):
            # Each share is normalised by global counts, so the shares sum to the batch loss;
            # DDP averages gradients over processes, hence the factor.
            acc.backward(loss * self.world)

    def step(self, optimizer: torch.optim.Optimizer, max_norm: float,
             loss_is_finite: bool) -> tuple[float, bool]:
        """Clip the gradients to ``max_norm`` and step, unless the loss or the gradient norm is
        not finite: then the gradients are dropped and weights and optimizer state stay as they
        were. Returns the norm before clipping and whether the step was skipped."""
        if self.deepspeed:  # the engine clips, and skips a step whose gradients overflow
            self.model.step()
            return (float(self.model.get_global_grad_norm()),
                    not self.model.was_step_applied())
        grad_norm = float(self.clip_grad_norm(max_norm))
        skipped = not (loss_is_finite and math.isfinite(grad_norm))
        if skipped:
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
        return grad_norm, skipped

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        if self.accelerator is None:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.fsdp:  # the norm of sharded gradients is a sharded tensor: take its value
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).full_tensor()
        return self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)

    # --- collectives ---------------------------------------------------------------------------
    def sum(self, *values: float) -> tuple:
        """Each value summed over processes (float64); the values themselves in one process."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def max(self, value: int) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t)

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """The first process's ``obj`` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

# --- DeepSpeed ZeRO ----------------------------------------------------------------------------
def _zero_stage(cpu: bool) -> int:
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    if stage not in (1, 2):
        raise UserError(f"DeepSpeed ZeRO stage {stage}: not supported, only stages 1 and 2; "
                        "for sharded parameters use FSDP (configs/accelerate/fsdp_cpu.yaml)")
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # else DeepSpeed takes a visible GPU
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise UserError("DeepSpeed: the deepspeed package is not installed "
                        "(pip install --no-build-isolation deepspeed)") from None
    return stage


def _zero_optimizer_state(module: torch.nn.Module, optimizer) -> dict:
    """A ZeRO optimizer's partitioned Adam state, whole and keyed like
    ``torch.optim.AdamW.state_dict()`` over ``module.parameters()`` (collective)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    base = optimizer.optimizer  # the AdamW over this process's flat partitions
    params = list(module.parameters())
    state = {}
    if base.state:  # Adam has state only after its first step, as in one process
        step = next(iter(base.state.values()))["step"]
        state = {i: {"step": step.clone(), **{key: safe_get_full_optimizer_state(p, key).clone()
                                              for key in ("exp_avg", "exp_avg_sq")}}
                 for i, p in enumerate(params)}
    return {"state": state, "param_groups": [
        {**{k: v for k, v in g.items() if k != "params"}, "params": list(range(len(params)))}
        for g in base.param_groups]}


def _load_zero_state(module: torch.nn.Module, optimizer, weights: dict,
                     optimizer_state: dict) -> None:
    """Load whole weights and Adam state into a ZeRO engine's module, fp32 master partitions
    and optimizer partitions."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    module.load_state_dict(weights, strict=False)  # tied weights are saved once
    for p in module.parameters():
        safe_set_full_fp32_param(p, p.detach().clone())
    if not optimizer_state["state"]:  # written before the first step: no Adam state yet
        return
    # Adam creates its state at the first step; a run resumed before any step has none to fill.
    base = optimizer.optimizer
    for flat in optimizer.single_partition_of_fp32_groups:
        base.state.setdefault(flat, {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                     "exp_avg_sq": torch.zeros_like(flat)})
    optimizer._lazy_init_hp_params_optimizer_state()  # links each parameter to its fragment
    for i, p in enumerate(module.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            safe_set_full_optimizer_state(p, optimizer_state["state"][i][key], key)
    step = optimizer_state["state"][0]["step"]
    for state in base.state.values():
        state["step"] = step.clone()

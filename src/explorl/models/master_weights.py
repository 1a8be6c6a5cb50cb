"""bfloat16 weights trained through float32 master copies (``bf16_weights=true``).

The model holds its weights in bfloat16: half the memory of float32 for the weights, and
forward passes in bfloat16 without autocast. An update smaller than a weight's bfloat16 spacing
(2^-8 of its size) would be rounded away if the optimizer stepped the bfloat16 weights
themselves, so AdamW steps float32 copies (with float32 moments) and the weights are the copies
rounded to bfloat16 after each step, as mixed-precision training in Megatron-LM and DeepSpeed
keeps them (Micikevicius et al. 2018). The gradients of an update's micro-batches still add up
in bfloat16, on the weights, before the step converts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from explorl.errors import UserError


class MasterWeights:
    """An optimizer over ``params`` (bfloat16) that keeps float32 masters and steps them with
    ``make(masters)`` (e.g. AdamW). ``state_dict`` carries each master as its parameter's
    ``master`` state entry, so a checkpoint resumes the float32 weights exactly."""

    def __init__(self, params: Iterable[torch.Tensor],
                 make: Callable[[list], torch.optim.Optimizer]):
        self.params = list(params)
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.inner = make(self.masters)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        """The inner optimizer's state, keyed by the bfloat16 parameters as well."""
        return {p: self.inner.state[m] for p, m in zip(self.params, self.masters)
                if m in self.inner.state}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.inner.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        for p, m in zip(self.params, self.masters):
            p.copy_(m)  # rounded to bfloat16

    def state_dict(self) -> dict:
        sd = self.inner.state_dict()
        state = {i: {**sd["state"].get(i, {}), "master": m.detach().clone()}
                 for i, m in enumerate(self.masters)}
        return {"state": state, "param_groups": sd["param_groups"]}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        state = {}
        for i, entry in sd["state"].items():
            entry = dict(entry)
            if "master" not in entry:  # the first step would overwrite the loaded weights
                raise UserError("bf16_weights: the checkpoint was written without them (no "
                                "float32 masters); resume with the setting it was written with")
            self.masters[int(i)].copy_(entry.pop("master"))
            if entry:
                state[int(i)] = entry
        self.inner.load_state_dict({"state": state, "param_groups": sd["param_groups"]})

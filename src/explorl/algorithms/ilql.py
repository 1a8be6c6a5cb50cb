"""ILQL: implicit language Q-learning (Snell et al. 2022), offline RL from scored samples.

Each completion token is an action taken in the state of the text before it; the sequence's
reward comes on its last token (EOS). Heads on the policy's last hidden state estimate two
Q functions over the whole vocabulary, their slow target copies and a value V:

* Q(s_t, a_t) -> r_t + gamma V(s_{t+1}), with V = 0 after the last token (both Q heads);
* V(s_t) fits the expectile ``tau`` of the smaller target Q(s_t, a_t) (IQL, Kostrikov et al.
  2021): ``|tau - 1(u < 0)| u^2`` with ``u = Q_target - V``, so V tracks the better actions
  seen in the data without ever querying an unseen one;
* a CQL term ``logsumexp_a Q(s_t, a) - Q(s_t, a_t)`` (Kumar et al. 2020) keeps the Q values of
  tokens the data never took from rising;
* the language-model head learns by advantage-weighted behaviour cloning,
  ``exp(awac_beta (Q_target - V)) * CE(logits, a_t)``; with ``awac_beta = 0`` (trlx's default)
  it is plain behaviour cloning of the data;
* after each step the targets move towards the online heads: ``target <- alpha Q + (1 - alpha)
  target`` (Polyak averaging).

Decoding adds the learned advantage to the logits: ``logits + beta (min Q_target - V)``
(:class:`ValueShift`), a hook on the LM head, so every engine that runs the model samples from
the shifted policy; ``beta = 0`` is the behaviour-cloned model itself. V is the same for every
token of a state, so it does not change the distribution; it keeps the shift an advantage.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from explorl.algorithms.losses import masked_mean, terminal_rewards
from explorl.batch import OfflineBatch
from explorl.errors import UserError
from explorl.models.policy import positions

HEADS_FILE, META_FILE = "ilql_heads.safetensors", "ilql.json"


# --- the math, pure -----------------------------------------------------------------------------
def bellman_targets(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                    gamma: float) -> torch.Tensor:
    """``r_t + gamma V(s_{t+1})`` per token ``[N, T]``; the state after a row's last token is
    terminal (value 0). ``values[:, t]`` is V of the state before token t."""
    mask = mask.to(values.dtype)
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:] * mask[:, 1:]
    return rewards + gamma * next_values


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """``|tau - 1(diff < 0)| diff^2`` per entry: above ``tau = 0.5`` positive errors (the
    target above the estimate) weigh more, so the estimate rises towards an upper expectile."""
    weight = torch.where(diff < 0, 1 - tau, tau)
    return weight * diff ** 2


def cql_loss(q_all: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``logsumexp_a Q(s, a) - Q(s, a_taken)`` per token ``[N, T]`` from ``q_all [N, T, V]``."""
    taken = q_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return torch.logsumexp(q_all, dim=-1) - taken


def awac_weights(advantages: torch.Tensor, awac_beta: float, cap: float = 100.0) -> torch.Tensor:
    """``exp(awac_beta * A)``, capped at ``cap`` (as IQL caps it) and without gradient."""
    return torch.exp(awac_beta * advantages.detach()).clamp(max=cap)


@torch.no_grad()
def polyak_update(target: torch.nn.Module, online: torch.nn.Module, alpha: float) -> None:
    """``target <- alpha * online + (1 - alpha) * target``, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(1 - alpha).add_(o, alpha=alpha)


def shifted_logits(logits: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
                   beta: float) -> torch.Tensor:
    """``logits + beta * (Q - V)``: ``q`` over the vocabulary ``[..., V]``, ``v`` per state."""
    return logits + beta * (q - v.unsqueeze(-1))


# --- the heads ----------------------------------------------------------------------------------
def _mlp(hidden: int, out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(hidden, 2 * hidden), torch.nn.ReLU(),
                               torch.nn.Linear(2 * hidden, out))


class ILQLHeads(torch.nn.Module):
    """Q heads (one or two) with their target copies, and a V head, each a two-layer MLP on the
    LM head's input."""

    def __init__(self, hidden_size: int, vocab_size: int, two_qs: bool = True):
        super().__init__()
        self.q = torch.nn.ModuleList(_mlp(hidden_size, vocab_size) for _ in range(1 + two_qs))
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.v = _mlp(hidden_size, 1)
        self.sizes = {"hidden_size": hidden_size, "vocab_size": vocab_size, "two_qs": two_qs}

    def online_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.q.parameters(), *self.v.parameters()]

    def target(self, hidden: torch.Tensor) -> torch.Tensor:
        """The smaller target Q over the vocabulary ``[..., V]``."""
        qs = [head(hidden) for head in self.target_q]
        return torch.stack(qs).amin(0) if len(qs) > 1 else qs[0]

    def target_taken(self, hidden: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The smaller target Q of the taken tokens ``[N, T]``, from the rows of the last
        layer that score them: no ``[N, T, V]`` tensor."""
        qs = []
        for head in self.target_q:
            features, last = head[:2](hidden), head[2]
            qs.append((features * last.weight[actions]).sum(-1) + last.bias[actions])
        return torch.stack(qs).amin(0) if len(qs) > 1 else qs[0]

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.v(hidden).squeeze(-1)


class ValueShift:
    """Forward hook on the LM head: its logits plus ``beta (min Q_target - V)`` of the same
    hidden states (:func:`shifted_logits`)."""

    def __init__(self, heads: ILQLHeads, beta: float):
        self.heads, self.beta = heads, beta

    def __call__(self, module, args, logits):
        if not self.beta:
            return logits
        with torch.no_grad(), full_precision(logits):
            h = args[0].float()
            shifted = shifted_logits(logits.float(), self.heads.target(h),
                                     self.heads.value(h), self.beta)
        return shifted.to(logits.dtype)


def full_precision(like: torch.Tensor):
    """The heads in float32 even under bf16 autocast: beta (Q - V) scales their rounding."""
    return torch.autocast(like.device.type, enabled=False)


@contextmanager
def value_shift(model, heads: ILQLHeads, beta: float):
    """Within the block, ``model`` decodes with the shifted logits."""
    handle = model.get_output_embeddings().register_forward_hook(ValueShift(heads, beta))
    try:
        yield
    finally:
        handle.remove()


def save_heads(folder: Path, heads: ILQLHeads, beta: float) -> None:
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()},
              str(folder / HEADS_FILE))
    (folder / META_FILE).write_text(json.dumps({"beta": beta, **heads.sizes}, indent=2))


def attach_saved_heads(model, folder: str | Path, beta: float | None = None) -> float | None:
    """Decode ``model`` with the ILQL heads saved in ``folder`` (a run's ``final/``), at the
    saved ``beta`` unless one is given; returns the beta, or None when the folder has none."""
    folder = Path(folder)
    if not (folder / META_FILE).exists():
        return None
    try:
        meta = json.loads((folder / META_FILE).read_text())
        heads = ILQLHeads(meta["hidden_size"], meta["vocab_size"], meta["two_qs"])
        heads.load_state_dict(load_file(str(folder / HEADS_FILE)))
        beta = float(meta["beta"] if beta is None else beta)
    except Exception as e:  # noqa: BLE001 - any failure here means the files are unusable
        reason = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{folder}: cannot load the ILQL heads ({type(e).__name__}: "
                        f"{reason})") from None
    if lm_head_sizes(model) != (meta["hidden_size"], meta["vocab_size"]):
        raise UserError(f"{folder / META_FILE}: heads for hidden size {meta['hidden_size']} "
                        f"and {meta['vocab_size']} tokens; the model's LM head has "
                        f"{lm_head_sizes(model)}")
    heads.to(model.device).eval()
    model.get_output_embeddings().register_forward_hook(ValueShift(heads, beta))
    return beta


def lm_head_sizes(model) -> tuple[int, int]:
    """The LM head's input width and number of tokens (what the heads read and score)."""
    vocab, hidden = model.get_output_embeddings().weight.shape
    return hidden, vocab


# --- the algorithm ------------------------------------------------------------------------------
def hidden_and_logits(model, batch: OfflineBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM head's input and its float logits at the states before each completion token,
    ``[N, T, H]`` and ``[N, T, V]``."""
    captured = {}
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: captured.update(h=args[0]))
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                    use_cache=False, logits_to_keep=batch.completion_ids.shape[1] + 1)
    finally:
        handle.remove()
    return captured["h"][:, :-1], out.logits[:, :-1].float()


class ILQL:
    """``method=ilql``: the knobs are in ``cfg.ilql`` (:class:`explorl.config.ILQLConfig`)."""

    def __init__(self, cfg, model):
        self.cfg, self.threshold = cfg.ilql, cfg.success_threshold
        self.heads = ILQLHeads(*lm_head_sizes(model), cfg.ilql.two_qs).to(model.device)
        self.steps = 0

    def select(self, rows: list[dict]) -> list[dict]:
        return rows  # every sample, successful or not, teaches the values

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.heads.online_parameters()

    def loss(self, model, batch: OfflineBatch) -> tuple[torch.Tensor, dict]:
        c, heads, mask = self.cfg, self.heads, batch.completion_mask
        hidden, logits = hidden_and_logits(model, batch)
        actions = batch.completion_ids
        with full_precision(logits):
            hidden = hidden.float()
            q_all = [head(hidden) for head in heads.q]
            with torch.no_grad():
                target_q = heads.target_taken(hidden, actions)
            v = heads.value(hidden)
        q_taken = [q.gather(-1, actions.unsqueeze(-1)).squeeze(-1) for q in q_all]
        targets = bellman_targets(terminal_rewards(batch.rewards, mask), v.detach(), mask,
                                  c.gamma)
        loss_q = sum(masked_mean((q - targets) ** 2, mask) for q in q_taken)
        loss_v = masked_mean(expectile_loss(target_q - v, c.tau), mask)
        loss_cql = sum(masked_mean(cql_loss(q, actions), mask) for q in q_all)
        advantage = target_q - v.detach()
        ce = F.cross_entropy(logits.transpose(1, 2), actions, reduction="none")
        loss_awac = masked_mean(ce * awac_weights(advantage, c.awac_beta), mask)
        loss = loss_q + loss_v + c.cql_scale * loss_cql + c.awac_scale * loss_awac
        success = (batch.rewards >= self.threshold).unsqueeze(-1) & mask.bool()
        failure = (batch.rewards < self.threshold).unsqueeze(-1) & mask.bool()
        parts = {"q": loss_q, "v": loss_v, "cql": loss_cql, "awac": loss_awac}
        return loss, {**{f"ilql/loss_{k}": float(x.detach()) for k, x in parts.items()},
                      "ilql/q": float(masked_mean(q_taken[0].detach(), mask)),
                      "ilql/v": float(masked_mean(v.detach(), mask)),
                      "ilql/advantage_success": _mean_or_none(advantage, success),
                      "ilql/advantage_failure": _mean_or_none(advantage, failure)}

    def after_step(self) -> None:
        self.steps += 1
        if self.steps % self.cfg.steps_for_target_q_sync == 0:
            for target, online in zip(self.heads.target_q, self.heads.q):
                polyak_update(target, online, self.cfg.alpha)

    @contextmanager
    def decoding(self, model):
        with value_shift(model, self.heads, self.cfg.beta):
            yield

    def save(self, folder: Path) -> None:
        save_heads(folder, self.heads, self.cfg.beta)

    def state(self) -> dict:
        return {"steps": self.steps}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ilql.{k}": v for k, v in self.heads.state_dict().items()}

    def load(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        heads = {k[len("ilql."):]: v for k, v in tensors.items() if k.startswith("ilql.")}
        if "steps" not in state or not heads:
            raise UserError("method=ilql cannot resume a checkpoint without ILQL heads (written "
                            "by another method); use resume=never or a new output_dir")
        self.steps = state["steps"]
        self.heads.load_state_dict(heads)


def _mean_or_none(x: torch.Tensor, where: torch.Tensor) -> float | None:
    return float(x[where].mean()) if where.any() else None

"""``explorl compare``: several configurations x N seeds, one table and shared plots.

A SPEC is a preset name (``grpo``, ``dapo``, ``dr_grpo``, ``rloo``, ``gspo``, ``cispo``, ``ppo``,
``ilql``, ``filtered_bc`` (offline: give them ``dataset=samples.jsonl``), ``e3_budget``,
``e3_budget_mixed``, ``e3_temperature``, ``e3``, ``herl`` (hindsight self-distillation),
``herl_reference`` (the reference's revisions), ``herl_teach_both`` (distillation and
revisions), ``herl_blank`` (the blank-list control of either), ``herl_both``,
``herl_on_policy``, ``herl_negatives``, ``herl_luffy``, ``herl_sft``, the exploration
baselines ``clip_higher``, ``dynamic_sampling``, ``top_entropy``, ``adaptive_entropy``, ...),
presets joined with ``+`` (their methods are joined too: ``herl+e3``), or
``label:key=value,key=value``. Each run lives in ``<output>/<label>/seed<k>``; rerunning the
same command resumes unfinished runs and reuses finished ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from explorl.config import load_config
from explorl.errors import UserError

PRESETS: dict[str, list[str]] = {
    "grpo": ["loss_type=grpo", "advantage_estimator=grpo", "scale_rewards=group"],
    "dapo": ["loss_type=dapo", "epsilon_high=0.28"],
    "dr_grpo": ["loss_type=dr_grpo", "advantage_estimator=dr_grpo"],
    "rloo": ["advantage_estimator=rloo"],
    "gspo": ["importance_sampling_level=sequence", "loss_type=grpo", "epsilon=3e-4",
             "epsilon_high=4e-4"],
    "cispo": ["loss_type=cispo", "epsilon_high=5.0"],
    "ppo": ["method=ppo"],
    "ilql": ["method=ilql"],
    "filtered_bc": ["method=filtered_bc"],
    "e3_budget": ["method=e3", "e3.adaptive_temperature=false"],
    "e3_budget_mixed": ["method=e3", "e3.adaptive_temperature=false", "e3.budget_rule=mixed"],
    "e3_temperature": ["method=e3", "e3.budget=false"],
    "e3": ["method=e3"],
    "herl": ["method=herl"],
    "herl_distill": ["method=herl", "herl.teach=distill"],
    "herl_reference": ["method=herl", "herl.teach=revise"],
    "herl_teach_both": ["method=herl", "herl.teach=both"],
    "herl_hindsight": ["method=herl", "herl.teach=revise", "herl.bonus_alpha=0"],
    "herl_original": ["method=herl", "herl.teach=revise", "herl.context=original"],
    "herl_blank": ["method=herl", "herl.blank_hindsight=true"],
    "herl_both": ["method=herl", "herl.teach=revise", "herl.context=both"],
    "herl_on_policy": ["method=herl", "herl.teach=revise", "herl.baseline=on_policy"],
    "herl_negatives": ["method=herl", "herl.teach=revise", "herl.revision_loss=none"],
    "herl_luffy": ["method=herl", "herl.teach=revise", "herl.context=original",
                   "herl.revision_loss=luffy", "herl.gamma=0.1", "scale_rewards=none"],
    "herl_sft": ["method=herl", "herl.teach=revise", "herl.context=original",
                 "herl.revision_loss=none", "herl.sft_coef=1.0", "herl.guide=initial",
                 "herl.baseline=on_policy"],
    "clip_higher": ["epsilon_high=0.28"],
    "dynamic_sampling": ["method=dynamic_sampling"],
    "top_entropy": ["entropy.top_quantile=0.2"],
    "adaptive_entropy": ["entropy.adaptive=true"],
}


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``label:k=v,k=v`` -> (label, overrides); ``a+b`` -> presets a then b."""
    if ":" in spec:
        label, body = spec.split(":", 1)
        items = [x for x in body.split(",") if x]
        if not label or any("=" not in x for x in items):
            raise UserError(f"compare: spec {spec!r}: expected label:key=value,key=value")
        return label, items
    overrides: list[str] = []
    methods: list[str] = []
    for name in spec.split("+"):
        if name not in PRESETS:
            raise UserError(f"compare: unknown preset {name!r} (presets: {', '.join(PRESETS)}; "
                            "or write label:key=value,...)")
        for item in PRESETS[name]:
            if item.startswith("method="):
                methods += [m for m in item[len("method="):].split("+") if m not in methods]
            else:
                overrides.append(item)
    return spec, overrides + ([f"method={'+'.join(methods)}"] if methods else [])


def run_compare(specs: list[str], seeds: int = 3, overrides: list[str] | None = None,
                config: str | None = None, out_dir: str = "runs/compare") -> dict:
    from explorl.offline import OfflineTrainer
    from explorl.report import aggregate
    from explorl.trainer import Trainer

    if seeds < 1:
        raise UserError(f"compare: --seeds must be >= 1, got {seeds}")
    out = Path(out_dir)
    plans = []
    for spec in specs:
        label, items = parse_spec(spec)
        for seed in range(seeds):
            run_dir = out / label / f"seed{seed}"
            cfg = load_config(config, [*(overrides or []), *items, f"seed={seed}",
                                       f"output_dir={run_dir}", "progress=false"])
            plans.append((label, run_dir, cfg))
    groups: dict[str, list[Path]] = {}
    for label, run_dir, cfg in plans:  # all configs validated before the first run starts
        summary_path = run_dir / "summary.json"
        done = summary_path.exists() and json.loads(summary_path.read_text()).get(
            "steps") == cfg.max_steps
        if not done:
            print(f"compare: {label} seed {cfg.seed} -> {run_dir}", flush=True)
            (OfflineTrainer if cfg.offline else Trainer)(cfg).train()
        groups.setdefault(label, []).append(run_dir)
    table = aggregate(groups, out)
    table["out_dir"] = str(out)
    return table

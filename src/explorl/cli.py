"""``explorl``: train, rm, sample, pairs, sft, eval, improve, compare.

Bad input ends with one line ``explorl: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from explorl.errors import Interrupted, TrainingStopped, UserError


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG.yaml] [key=value ...]``: the first argument without '=' is the config file."""
    path = None
    if args and "=" not in args[0]:
        path, args = args[0], args[1:]
    for a in args:
        if "=" not in a:
            raise UserError(f"argument {a!r}: expected key=value (only one config file allowed)")
    return path, args


def cmd_train(ns: argparse.Namespace) -> int:
    from explorl.config import load_config

    path, overrides = _split_config(ns.args)
    cfg = load_config(path, overrides)
    _quiet()
    from explorl.trainer import Trainer, before_after_table

    if cfg.offline:
        from explorl.offline import OfflineTrainer

        summary = OfflineTrainer(cfg).train()
        print(before_after_table(summary))
        print(f"steps {summary['steps']} on {summary['train_samples']} scored samples, "
              f"{summary['train_seconds']} s; output in {cfg.output_dir}/")
        return 0
    trainer = Trainer(cfg)
    summary = trainer.train()
    if not trainer.dist.is_main:  # one report per run, not one per process
        return 0
    print(before_after_table(summary))
    print(f"steps {summary['steps']}, {summary['tokens_generated']} generated tokens, "
          f"{summary['train_seconds']} s; output in {cfg.output_dir}/")
    return 0


def cmd_sft(ns: argparse.Namespace) -> int:
    from explorl.config import load_config
    from explorl.sft import SFTConfig, run_sft

    path, overrides = _split_config(ns.args)
    cfg = load_config(path, overrides, cls=SFTConfig)
    _quiet()
    result = run_sft(cfg)
    print(json.dumps(result, indent=2))
    print(f"saved to {cfg.output_dir}/")
    return 0


def cmd_rm(ns: argparse.Namespace) -> int:
    from explorl.config import RMConfig, load_config

    path, overrides = _split_config(ns.args)
    cfg = load_config(path, overrides, cls=RMConfig)
    _quiet()
    from explorl.rm import RewardModelTrainer

    summary = RewardModelTrainer(cfg).train()
    before, after = summary["before"], summary["after"]
    print(f"held-out pairwise accuracy {100 * before['accuracy']:.1f}% -> "
          f"{100 * after['accuracy']:.1f}% on {after['n']} pairs; {summary['steps']} steps, "
          f"{summary['train_seconds']} s; reward model in {cfg.output_dir}/final/")
    return 0


def cmd_sample(ns: argparse.Namespace) -> int:
    if ns.n < 1:
        raise UserError(f"--n {ns.n}: must be >= 1")
    if not ns.temperature > 0:
        raise UserError(f"--temperature {ns.temperature}: must be > 0")
    raw = {"model": ns.model, "eval_size": ns.size, "task_train_size": ns.size,
           "max_completion_length": ns.max_new_tokens, "output_dir": "unused", "seed": ns.seed}
    from explorl.data.tasks import BUILTIN_TASKS

    if ns.dataset in BUILTIN_TASKS:
        raw["dataset"] = ns.dataset
    if ns.reward:
        raw["reward_funcs"] = ns.reward.split(",")
    t = _trainer_for(ns, raw)
    from explorl.agents import AgentCollector
    from explorl.sample import sample_episodes, sample_rows, write_jsonl

    rows = t.train_rows[: ns.size] if ns.split == "train" and ns.dataset == t.cfg.dataset \
        else t.eval_rows
    if isinstance(t.collect, AgentCollector):  # a multi-turn task: episodes
        samples = sample_episodes(t.collect, rows, ns.n, ns.temperature, ns.max_new_tokens)
    else:
        samples = sample_rows(t.engine, t.tokenizer, rows, t.scorer, ns.n, ns.temperature,
                              ns.max_new_tokens)
    write_jsonl(samples, Path(ns.out))
    known = [s["reward"] for s in samples if s["reward"] is not None]
    mean = sum(known) / len(known) if known else float("nan")
    print(f"{len(samples)} completions of {len(rows)} prompts, mean reward {mean:.3f}; "
          f"written to {ns.out}")
    return 0


def cmd_pairs(ns: argparse.Namespace) -> int:
    if ns.per_prompt < 1:
        raise UserError(f"--per-prompt {ns.per_prompt}: must be >= 1")
    from explorl.data.preferences import load_samples, pairs_from_samples
    from explorl.sample import write_jsonl

    samples = load_samples(ns.samples)
    pairs = pairs_from_samples(samples, ns.threshold, ns.per_prompt, ns.seed)
    if not pairs:
        raise UserError(f"{ns.samples}: no prompt has both a completion scoring at least "
                        f"{ns.threshold} and one below it")
    write_jsonl(pairs, Path(ns.out))
    print(f"{len(pairs)} preference pairs from {len(samples)} samples; written to {ns.out}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    try:
        pass_k = tuple(sorted({int(k) for k in ns.pass_k.split(",") if k})) if ns.pass_k else ()
    except ValueError:
        raise UserError(f"--pass-k {ns.pass_k!r}: expected integers like 1,4,16") from None
    if any(k < 1 for k in pass_k):
        raise UserError(f"--pass-k {ns.pass_k!r}: k must be >= 1")
    if not ns.temperature > 0:
        raise UserError(f"--temperature {ns.temperature}: must be > 0")
    raw = {"model": ns.model, "dataset": ns.dataset, "eval_size": ns.size,
           "max_completion_length": ns.max_new_tokens, "output_dir": "unused"}
    if ns.reward:
        raw["reward_funcs"] = ns.reward.split(",")
    t = _trainer_for(ns, raw)
    from explorl.agents import AgentCollector
    from explorl.evaluation import evaluate

    if isinstance(t.collect, AgentCollector):  # a multi-turn task: greedy episodes
        result = t.collect.evaluate(t.eval_rows, t.cfg.max_completion_length)
    else:
        result = evaluate(t.engine, t.tokenizer, t.eval_rows, t.scorer.funcs[0],
                          t.cfg.max_completion_length, pass_k=pass_k,
                          temperature=ns.temperature, threshold=t.cfg.success_threshold,
                          codec=t.codec)
    result["model"] = ns.model
    if ns.json:
        print(json.dumps(result))
    else:
        print(f"greedy accuracy {100 * result['accuracy']:.1f}% on {result['n']} prompts")
        for k, v in result.get("pass_at_k", {}).items():
            print(f"pass@{k} {100 * v:.1f}%")
        for level, v in (result.get("by_level") or {}).items():
            print(f"  {level}: {100 * v:.1f}%")
    return 0


def _trainer_for(ns: argparse.Namespace, raw: dict):
    """A Trainer that only loads the model, the data and the reward of ``eval``/``improve``."""
    from explorl.config import config_from_dict

    for flag, value in (("--size", ns.size), ("--max-new-tokens", ns.max_new_tokens)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    _quiet()
    from explorl.data.tasks import BUILTIN_TASKS
    from explorl.models.policy import is_named_model
    from explorl.trainer import Trainer

    if ns.dataset not in BUILTIN_TASKS:
        raw["eval_dataset"] = ns.dataset
    cfg = config_from_dict({**raw, "engine": ns.engine})
    if not Path(ns.model).exists() and not is_named_model(ns.model):
        raise UserError(f"model {ns.model!r}: no such model folder or run directory")
    if ns.ilql_beta is not None and not 0 <= ns.ilql_beta < float("inf"):
        raise UserError(f"--ilql-beta {ns.ilql_beta}: must be a finite number >= 0")
    trainer = Trainer(cfg)
    from explorl.algorithms.ilql import attach_saved_heads
    from explorl.models.policy import resolve_model_path

    # a model trained with method=ilql decodes with its value heads, wherever it is sampled
    beta = attach_saved_heads(trainer.model, resolve_model_path(ns.model), ns.ilql_beta)
    if beta is None and ns.ilql_beta is not None:
        raise UserError(f"--ilql-beta: {ns.model} has no ILQL heads (train it with "
                        "method=ilql)")
    if beta is not None and ns.engine == "vllm":
        raise UserError(f"--engine vllm: {ns.model} decodes with its ILQL value heads, which "
                        "vLLM does not run; use --engine fast")
    return trainer


def cmd_improve(ns: argparse.Namespace) -> int:
    if ns.rounds < 0:
        raise UserError(f"--rounds {ns.rounds}: must be >= 0")
    if ns.temperature < 0:
        raise UserError(f"--temperature {ns.temperature}: must be >= 0 (0: greedy)")
    raw = {"model": ns.model, "dataset": ns.dataset, "eval_size": ns.size,
           "max_completion_length": ns.max_new_tokens, "output_dir": "unused",
           "reward_funcs": ["rubric"], "rubric_reward": "strict"}
    for key in ("judge.url", "judge.model", "judge.api_key_env", "herl.revise_template"):
        if getattr(ns, key) is not None:
            raw[key] = getattr(ns, key)
    t = _trainer_for(ns, raw)
    from explorl.agents import AgentCollector
    from explorl.exploration.hindsight import template_for
    from explorl.improve import improve

    template = template_for(t.cfg.herl.revise_template, t.cfg.dataset)
    episodes = t.collect if isinstance(t.collect, AgentCollector) else None
    result = improve(t.engine, t.tokenizer, t.eval_rows, template, ns.rounds, t.rubric,
                     ns.max_new_tokens, ns.temperature, t.codec, ns.lists, episodes)
    answers = result.pop("answers")
    result["model"] = ns.model
    if ns.json:
        print(json.dumps(result))
        return 0
    for r, (s, d) in enumerate(zip(result["success_by_round"], result["dense_by_round"])):
        print(f"round {r}: all criteria met {100 * s:.1f}%, criteria met {100 * d:.1f}%")
    for row, a in list(zip(t.eval_rows, answers))[: ns.show]:
        print(f"  {row['prompt']!r} -> {a!r}")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from explorl.compare import run_compare

    _quiet()
    table = run_compare(ns.specs, seeds=ns.seeds, overrides=ns.set or [], config=ns.config,
                        out_dir=ns.output)
    print((Path(table["out_dir"]) / "table.md").read_text())
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other bad input: one line, exit code 2."""

    def error(self, message: str):
        where = "" if self.prog == "explorl" else f"{self.prog}: "
        print(f"explorl: error: {where}{message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="explorl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _config_commands(sub)
    _model_commands(sub)
    _data_commands(sub)
    return p


def _config_commands(sub) -> None:
    """The commands configured by a YAML file and key=value overrides: train, sft, rm."""
    from explorl.config import RMConfig, TrainConfig
    from explorl.config_files import help_text

    t = sub.add_parser("train", help="RL training (GRPO); no arguments: the embedded default",
                       description="Train with GRPO (and HeRL, E3), PPO, or offline with ILQL "
                       "or filtered BC: one optional YAML file, "
                       "then key=value overrides (section.key=value for a section's key).",
                       epilog=help_text(TrainConfig),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]")
    t.set_defaults(fn=cmd_train)
    s = sub.add_parser("sft", help="supervised warm start that builds the shipped tiny model")
    s.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]")
    s.set_defaults(fn=cmd_sft)
    r = sub.add_parser("rm", help="a Bradley-Terry reward model from preference pairs",
                       epilog=help_text(RMConfig),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]")
    r.set_defaults(fn=cmd_rm)


def _model_argument(parser, what: str) -> None:
    parser.add_argument("model", help=f"'tiny', 'smollm2-135m-instruct' (or 'smollm2'), {what}")
    parser.add_argument("--ilql-beta", type=float, default=None, help="decode a method=ilql "
                        "model with logits + BETA (Q - V) (default: its saved beta; 0: its "
                        "behaviour-cloned model)")
    parser.add_argument("--engine", choices=["fast", "hf", "vllm"], default="fast",
                        help="the decoding engine (default fast; vllm: docs/vllm.md)")


def _model_commands(sub) -> None:
    """The commands that decode a model: eval, sample, improve."""
    e = sub.add_parser("eval", help="greedy accuracy and pass@k of a model or run directory")
    _model_argument(e, "a saved model folder, or a run directory")
    e.add_argument("--dataset", default="arithmetic", help="built-in task or data file")
    e.add_argument("--reward", default=None, help="reward function(s), comma-separated")
    e.add_argument("--pass-k", default="1,4", help="k values for pass@k (default 1,4)")
    e.add_argument("--temperature", type=float, default=1.0, help="sampling T for pass@k")
    e.add_argument("--size", type=int, default=1000, help="held-out prompts (default 1000)")
    e.add_argument("--max-new-tokens", type=int, default=16)
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")
    e.set_defaults(fn=cmd_eval)
    sm = sub.add_parser("sample", help="N completions per prompt with their rewards (JSONL)")
    _model_argument(sm, "a saved model folder or a run directory")
    sm.add_argument("--n", type=int, default=8, help="completions per prompt (default 8)")
    sm.add_argument("--out", required=True, help="output JSONL file")
    sm.add_argument("--dataset", default="arithmetic", help="built-in task or a data file "
                    "(a file needs --reward)")
    sm.add_argument("--split", choices=["train", "eval"], default="train",
                    help="a built-in task's train (default) or held-out prompts")
    sm.add_argument("--reward", default=None, help="reward function(s), comma-separated")
    sm.add_argument("--size", type=int, default=1000, help="prompts (default 1000)")
    sm.add_argument("--temperature", type=float, default=1.0)
    sm.add_argument("--max-new-tokens", type=int, default=16)
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(fn=cmd_sample)
    i = sub.add_parser("improve", help="test-time self-improvement: answer, grade, revise")
    _model_argument(i, "a saved model folder, or a run directory")
    i.add_argument("--rounds", type=int, default=3, help="revision rounds (default 3)")
    i.add_argument("--dataset", default="rubric", help="built-in rubric task or a data file "
                   "with a 'rubric' column (default rubric)")
    i.add_argument("--size", type=int, default=500, help="prompts (default 500)")
    i.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    i.add_argument("--max-new-tokens", type=int, default=16)
    i.add_argument("--lists", choices=["shown", "blank", "swapped"], default="shown",
                   help="met/unmet lists in the hindsight prompt (blank: the control)")
    i.add_argument("--template", dest="herl.revise_template", default=None)
    i.add_argument("--judge-url", dest="judge.url", default=None)
    i.add_argument("--judge-model", dest="judge.model", default=None)
    i.add_argument("--judge-api-key-env", dest="judge.api_key_env", default=None)
    i.add_argument("--show", type=int, default=0, help="print this many final answers")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.set_defaults(fn=cmd_improve)


def _data_commands(sub) -> None:
    """The commands over files and runs: pairs, compare."""
    pr = sub.add_parser("pairs", help="preference pairs from sampled completions")
    pr.add_argument("samples", help="explorl sample's JSONL")
    pr.add_argument("--out", required=True, help="output JSONL of prompt/chosen/rejected")
    pr.add_argument("--threshold", type=float, default=1.0,
                    help="chosen: reward at least this; rejected: below (default 1.0)")
    pr.add_argument("--per-prompt", type=int, default=4, help="pairs per prompt at most")
    pr.add_argument("--seed", type=int, default=0)
    pr.set_defaults(fn=cmd_pairs)
    c = sub.add_parser("compare", help="several configurations x seeds: one table, plots")
    c.add_argument("specs", nargs="+", metavar="SPEC",
                   help="a preset (grpo, dr_grpo, rloo, dapo, bnpo...) or label:key=v,key=v")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("--set", action="append", metavar="key=value",
                   help="override applied to every configuration")
    c.add_argument("--config", default=None, help="base YAML config for every configuration")
    c.add_argument("--output", default="runs/compare", help="output folder")
    c.set_defaults(fn=cmd_compare)


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.fn(ns)
    except UserError as e:
        print(f"explorl: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"explorl: stopped: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        if not e.quiet:  # one line per run, not one per process
            print(f"explorl: interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("explorl: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``explorl`` command. Under a launcher each process leaves with ``os._exit`` once its
    work is flushed: the interpreter's teardown could destroy the process group's native
    threads while they run, which aborts the process ("terminate called without an active
    exception") and fails the whole launch after a finished run."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

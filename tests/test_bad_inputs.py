"""A corpus of bad inputs through the command line: each ends with exit code 2 and exactly one
line ``explorl: error: ...`` naming the field (and file:line where there is one), no traceback,
and nothing written."""

import importlib.util
import json

import pytest
import torch

from explorl.cli import main

LONG_PROMPT = json.dumps({"prompt": "1+" * 300 + "1=", "answer": "301"}) + "\n"
ROW = json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n"
TRAIN = "train output_dir={out}"
DATA = "reward_funcs=arithmetic dataset={tmp}/d.jsonl"
ILQL = "dataset={tmp}/s.jsonl max_steps=2 progress=false plots=false"
SCORED = '{"prompt": "1+1=", "completion": "2", "reward": 1.0}\n'
SMALL = "max_steps=2 eval_size=4 task_train_size=20 prompts_per_step=2 num_generations=2 " \
        "progress=false plots=false"


def tiny_model_folder(path, tokenizer=True, weights="safetensors"):
    """A saved tiny Qwen2: with or without a tokenizer, safetensors or a pickle .bin only."""
    import torch
    from transformers import Qwen2ForCausalLM

    from explorl.models.tiny import char_tokenizer, tiny_config

    tok = char_tokenizer()
    model = Qwen2ForCausalLM(tiny_config(len(tok), hidden=16, layers=1))
    if weights == "safetensors":
        model.save_pretrained(path)
    else:
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    if tokenizer:
        tok.save_pretrained(path)


def other_model_checkpoint(path):
    """A readable checkpoint whose weights do not fit the model being trained."""
    import torch
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(path / "model.safetensors"))
    (path / "state.json").write_text('{"step": 2, "optimizer": {}, "rng": {}, "trainer": {}}')


CASES = [
    # --- config: keys, types, values ---------------------------------------------------------
    ("unknown-key", f"{TRAIN} bogus=1", {}, "unknown config key 'bogus'"),
    ("int-type", f"{TRAIN} max_steps=abc", {}, "max_steps: expected an integer"),
    ("bool-type", f"{TRAIN} progress=maybe", {}, "progress: expected true or false"),
    ("float-type", f"{TRAIN} learning_rate=fast", {}, "learning_rate: expected a number"),
    ("list-type", f"{TRAIN} eval_pass_k=a,b", {}, "eval_pass_k: expected an integer"),
    ("one-generation", f"{TRAIN} num_generations=1", {}, "num_generations"),
    ("negative-lr", f"{TRAIN} learning_rate=-1e-5", {}, "learning_rate: must be > 0"),
    ("zero-steps", f"{TRAIN} max_steps=0", {}, "max_steps: must be >= 1"),
    ("zero-temperature", f"{TRAIN} temperature=0", {}, "temperature: must be > 0"),
    ("top-p", f"{TRAIN} top_p=1.5", {}, "top_p: must be in (0, 1]"),
    ("bad-enum", f"{TRAIN} loss_type=ppo", {}, "loss_type: 'ppo' is not one of"),
    ("budget-min", f"{TRAIN} method=e3 e3.budget_min=10 num_generations=8", {},
     "e3.budget_min: need 2 <= budget_min (10)"),
    ("unknown-method", f"{TRAIN} method=herl+ppo2", {}, "method: 'herl+ppo2': expected one"),
    ("renamed-key", f"{TRAIN} herl_gamma=2", {}, "unknown config key 'herl_gamma' (now "
     "herl.gamma)"),
    ("unknown-section-key", f"{TRAIN} herl.gama=2", {},
     "unknown config key 'herl.gama' (did you mean herl.gamma?)"),
    ("section-type", f"{TRAIN} e3.budget_max=lots", {}, "e3.budget_max: expected an integer"),
    ("cispo-without-cap", f"{TRAIN} loss_type=cispo", {}, "epsilon_high: loss_type cispo caps"),
    ("weights-count", f"{TRAIN} reward_weights=1,2", {}, "reward_weights"),
    ("dual-clip", f"{TRAIN} dual_clip=0.5", {}, "dual_clip: must be > 1"),
    ("empty-output-dir", "train output_dir=", {}, "output_dir: must not be empty"),
    ("not-key-value", f"{TRAIN} max_steps", {}, "expected key=value"),
    # --- config: YAML files ------------------------------------------------------------------
    ("yaml-malformed", "train {tmp}/c.yaml output_dir={out}",
     {"c.yaml": "seed: 1\nmax_steps: [1,\n"}, "c.yaml:3: invalid YAML"),
    ("yaml-list", "train {tmp}/c.yaml output_dir={out}", {"c.yaml": "- seed\n- 1\n"},
     "c.yaml:1: the config must be a mapping"),
    ("yaml-missing", "train {tmp}/nope.yaml output_dir={out}", {},
     "nope.yaml: config file not found"),
    ("yaml-unknown-key", "train {tmp}/c.yaml output_dir={out}",
     {"c.yaml": "seed: 1\nmax_steps: 5\nbogus: 2\n"}, "c.yaml:3: unknown config key 'bogus'"),
    ("yaml-wrong-type", "train {tmp}/c.yaml output_dir={out}",
     {"c.yaml": "seed: 1\nmax_steps: lots\n"}, "c.yaml:2: max_steps: expected an integer"),
    ("yaml-not-utf8", "train {tmp}/c.yaml output_dir={out}", {"c.yaml": b"seed: \xff\n"},
     "c.yaml: not UTF-8"),
    ("yaml-duplicate-key", "train {tmp}/c.yaml output_dir={out}",
     {"c.yaml": "seed: 1\nmax_steps: 5\nseed: 2\n"},
     "c.yaml:3: invalid YAML (duplicate key 'seed' (first on line 1))"),
    ("yaml-section-line", "train {tmp}/c.yaml output_dir={out}",
     {"c.yaml": "seed: 1\nherl:\n  gamma: 2\n  accept: always\n"},
     "c.yaml:4: herl.accept: 'always' is not one of"),
    ("yaml-section-not-mapping", "train {tmp}/c.yaml output_dir={out}",
     {"c.yaml": "herl: 3\n"}, "c.yaml:1: herl: expected a mapping"),
    # --- data ----------------------------------------------------------------------------------
    ("data-missing", f"{TRAIN} {DATA}", {}, "dataset: file not found"),
    ("data-bad-json", f"{TRAIN} {DATA}", {"d.jsonl": ROW + '{"prompt": "2+2=", \n'},
     "d.jsonl:2: invalid JSON"),
    ("data-no-prompt", f"{TRAIN} {DATA}", {"d.jsonl": ROW + '{"question": "1+1="}\n'},
     "d.jsonl:2: missing 'prompt' column"),
    ("data-empty-prompt", f"{TRAIN} {DATA}", {"d.jsonl": '{"prompt": "  "}\n'},
     "d.jsonl:1: prompt: empty prompt"),
    ("data-null-prompt", f"{TRAIN} {DATA}", {"d.jsonl": ROW + '{"prompt": null}\n'},
     "d.jsonl:2: prompt: missing value"),
    ("data-not-object", f"{TRAIN} {DATA}", {"d.jsonl": "[1, 2]\n"},
     "d.jsonl:1: expected an object"),
    ("data-not-utf8", f"{TRAIN} {DATA}", {"d.jsonl": ROW.encode() + b'{"prompt": "\xff"}\n'},
     "d.jsonl:2: not valid UTF-8"),
    ("data-empty-file", f"{TRAIN} {DATA}", {"d.jsonl": ""}, "d.jsonl: data set is empty"),
    ("data-bad-message", f"{TRAIN} {DATA}", {"d.jsonl": '{"prompt": [{"role": "user"}]}\n'},
     "d.jsonl:1: prompt[0]: missing 'content'"),
    ("data-extension", "train output_dir={out} reward_funcs=arithmetic dataset={tmp}/d.csv",
     {"d.csv": "prompt\n1+1=\n"}, "unsupported file type '.csv'"),
    ("data-too-long", f"{TRAIN} {DATA}", {"d.jsonl": ROW + LONG_PROMPT},
     "max_prompt_length/max_completion_length"),
    ("data-no-reward", "train output_dir={out} dataset={tmp}/d.jsonl", {"d.jsonl": ROW},
     "reward_funcs: a data set other than a built-in task"),
    ("eval-data-missing", f"{TRAIN} eval_dataset={{tmp}}/nope.jsonl", {},
     "eval_dataset: file not found"),
    # --- reward functions ----------------------------------------------------------------------
    ("reward-no-module", f"{TRAIN} reward_funcs=no_such_module_xyz:fn", {},
     "reward_funcs: cannot import 'no_such_module_xyz'"),
    ("reward-no-function", f"{TRAIN} reward_funcs=tests.helpers.rewards:nope", {},
     "reward_funcs: 'tests.helpers.rewards' has no function 'nope'"),
    ("reward-not-callable", f"{TRAIN} reward_funcs=os:sep", {}, "has no function 'sep'"),
    ("reward-signature", f"{TRAIN} reward_funcs=bad_reward_mod:one_arg",
     {"bad_reward_mod.py": "def one_arg(completions):\n    return [0.0]\n"},
     "reward_funcs: bad_reward_mod:one_arg: expected fn(prompts, completions"),
    ("reward-import-error", f"{TRAIN} reward_funcs=broken_reward_mod:fn",
     {"broken_reward_mod.py": "raise RuntimeError('boom')\n"}, "cannot import 'broken_reward_mod'"),
    ("reward-unknown-name", f"{TRAIN} reward_funcs=arithmatic", {},
     "reward_funcs: 'arithmatic': expected 'module:function'"),
    # --- rubrics and the judge ---------------------------------------------------------------
    ("rubric-unknown-check", f"{TRAIN} dataset={{tmp}}/r.jsonl method=herl",
     {"r.jsonl": '{"prompt": "a", "rubric": [{"check": "nope"}]}\n'},
     "r.jsonl: row 1: rubric[0].check: unknown check 'nope'"),
    ("rubric-bad-args", f"{TRAIN} dataset={{tmp}}/r.jsonl method=herl",
     {"r.jsonl": '{"prompt": "a", "rubric": [{"check": "max_words"}]}\n'
                 '{"prompt": "b", "rubric": [{"check": "max_words", "args": {"k": 1}}]}\n'},
     "r.jsonl: row 1: rubric[0].args"),
    ("rubric-negative-weight", f"{TRAIN} dataset={{tmp}}/r.jsonl",
     {"r.jsonl": '{"prompt": "a", "rubric": [{"check": "json", "weight": -2}]}\n'},
     "rubric[0].weight: must be a number >= 0"),
    ("rubric-not-a-list", f"{TRAIN} dataset={{tmp}}/r.jsonl",
     {"r.jsonl": '{"prompt": "a", "rubric": {"check": "json"}}\n'},
     "row 1: rubric: expected a non-empty list"),
    ("herl-without-rubric", f"{TRAIN} method=herl dataset=arithmetic", {},
     "method: herl needs the 'rubric' reward"),
    ("herl-bad-template", f"{TRAIN} method=herl herl.revise_template={{{{nope}}}}", {},
     "herl.revise_template: bad placeholder"),
    ("judge-not-configured", f"{TRAIN} dataset={{tmp}}/j.jsonl",
     {"j.jsonl": '{"prompt": "a", "rubric": [{"description": "polite", "check": "judge"}]}\n'},
     "judge.url: the rubric has criteria checked by 'judge'"),
    ("judge-no-key", f"{TRAIN} dataset={{tmp}}/j.jsonl judge.url=http://127.0.0.1:9/v1 "
     "judge.model=m judge.api_key_env=EXPLORL_TEST_ABSENT_KEY",
     {"j.jsonl": '{"prompt": "a", "rubric": [{"description": "polite", "check": "judge"}]}\n'},
     "judge.api_key_env: environment variable EXPLORL_TEST_ABSENT_KEY is not set"),
    ("judge-bad-url", f"{TRAIN} dataset={{tmp}}/j.jsonl judge.url=ftp://x judge.model=m "
     "judge.api_key_env=HOME",
     {"j.jsonl": '{"prompt": "a", "rubric": [{"description": "polite", "check": "judge"}]}\n'},
     "judge.url:"),
    # --- models --------------------------------------------------------------------------------
    ("model-missing", f"{TRAIN} model=/nonexistent/model", {}, "model=/nonexistent/model"),
    ("model-empty-folder", f"{TRAIN} model={{tmp}}/m", {"m/": None}, "no config.json"),
    ("model-no-tokenizer", f"{TRAIN} model={{tmp}}/m",
     {"m/": lambda p: tiny_model_folder(p, tokenizer=False)}, "cannot load a tokenizer"),
    ("model-pickle-only", f"{TRAIN} model={{tmp}}/m",
     {"m/": lambda p: tiny_model_folder(p, weights="bin")}, "cannot load the model"),
    ("model-hub-offline", f"{TRAIN} model=no-such-org/no-such-model-xyz", {},
     "model=no-such-org/no-such-model-xyz"),
    # --- eval and compare ----------------------------------------------------------------------
    # --- resuming ------------------------------------------------------------------------------
    ("checkpoint-corrupt", f"{TRAIN} max_steps=3", {"out/checkpoint-2/state.json": "{"},
     "checkpoint-2: cannot resume from this checkpoint (JSONDecodeError"),
    ("checkpoint-other-model", f"{TRAIN} max_steps=3",
     {"out/checkpoint-2/": lambda p: other_model_checkpoint(p)},
     "checkpoint-2: cannot resume from this checkpoint (RuntimeError"),
    ("output-dir-is-a-file", "train output_dir={tmp}/f.txt", {"f.txt": "x"}, "output_dir"),
    # --- values the checks let through ---------------------------------------------------------
    ("infinite-lr", f"{TRAIN} learning_rate=inf {SMALL}", {}, "learning_rate"),
    ("reward-no-arguments", f"{TRAIN} reward_funcs=os:getcwd {SMALL}", {}, "reward_funcs"),
    ("eval-zero-temperature", "eval tiny --temperature 0 --size 4", {}, "--temperature"),
    ("eval-negative-temperature", "eval tiny --temperature -1 --size 4", {}, "--temperature"),
    # --- eval and compare ----------------------------------------------------------------------
    ("eval-missing-model", "eval {tmp}/nope", {}, "no such model folder or run directory"),
    ("eval-pass-k-text", "eval tiny --pass-k a,b", {}, "--pass-k 'a,b': expected integers"),
    ("eval-pass-k-zero", "eval tiny --pass-k 0,4", {}, "--pass-k '0,4': k must be >= 1"),
    ("eval-size-zero", "eval tiny --size 0", {}, "--size 0: must be >= 1"),
    ("eval-missing-data", "eval tiny --dataset {tmp}/nope.jsonl --reward arithmetic", {},
     "file not found"),
    ("eval-bad-reward", "eval tiny --reward no_such_module_xyz:fn", {}, "cannot import"),
    ("eval-size-text", "eval tiny --size many", {}, "--size"),
    ("eval-unknown-option", "eval tiny --bogus", {}, "--bogus"),
    ("compare-unknown-preset", "compare grpo nosuchpreset --output {out}", {},
     "unknown preset 'nosuchpreset'"),
    ("compare-bad-spec", "compare lbl:max_steps --output {out}", {},
     "spec 'lbl:max_steps': expected label:key=value"),
    ("compare-zero-seeds", "compare grpo --seeds 0 --output {out}", {}, "--seeds must be >= 1"),
    ("compare-bad-set", "compare grpo --set bogus=1 --output {out}", {},
     "unknown config key 'bogus'"),
    # --- reward models, sampling, PPO --------------------------------------------------------
    ("pairs-missing-column", "rm output_dir={out} dataset={tmp}/p.jsonl",
     {"p.jsonl": '{"prompt": "a", "chosen": "b"}\n'}, "p.jsonl:1: missing 'rejected' column"),
    ("pairs-empty-completion", "rm output_dir={out} dataset={tmp}/p.jsonl",
     {"p.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                 '{"prompt": "a", "chosen": "", "rejected": "c"}\n'},
     "p.jsonl:2: chosen: empty completion"),
    ("pairs-identical", "rm output_dir={out} dataset={tmp}/p.jsonl",
     {"p.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "b"}\n'},
     "p.jsonl:1: rejected: identical to chosen"),
    ("pairs-bad-margin", "rm output_dir={out} dataset={tmp}/p.jsonl",
     {"p.jsonl": '{"chosen": "ab", "rejected": "ac", "margin": "big"}\n'},
     "p.jsonl:1: margin: expected a finite number"),
    ("rm-no-dataset", "rm output_dir={out}", {}, "dataset: explorl rm needs preference pairs"),
    ("rm-bad-key", "rm output_dir={out} learning_rat=1", {}, "unknown config key 'learning_rat'"),
    ("reward-model-not-a-classifier", f"{TRAIN} reward_funcs={{tmp}}/m",
     {"m/": lambda p: tiny_model_folder(p)}, "is not a reward model (a sequence classifier"),
    ("ppo-with-beta", f"{TRAIN} method=ppo beta=0.1", {},
     "beta: method=ppo: it puts the KL penalty into the reward"),
    ("ppo-with-herl", f"{TRAIN} method=ppo+herl", {}, "method: herl under ppo is not supported"),
    ("ppo-critic-without-rm", f"{TRAIN} method=ppo ppo.critic_init=reward_model {SMALL}", {},
     "ppo.critic_init: reward_model needs a reward model in reward_funcs"),
    ("sample-zero-n", "sample tiny --n 0 --out {out}/s.jsonl", {}, "--n 0: must be >= 1"),
    ("pairs-not-samples", "pairs {tmp}/s.jsonl --out {out}/p.jsonl",
     {"s.jsonl": '{"prompt": "a"}\n'}, "s.jsonl:1: missing field 'completion'"),
    ("pairs-row-without-reward", "pairs {tmp}/s.jsonl --out {out}/p.jsonl",
     {"s.jsonl": '{"prompt": "a", "completion": "b", "reward": 1}\n'
                 '{"prompt": "a", "completion": "c"}\n'}, "s.jsonl:2: missing field 'reward'"),
    ("ilql-row-without-reward", f"{TRAIN} method=ilql {ILQL}",
     {"s.jsonl": SCORED + '{"prompt": "1+1=", "completion": "3"}\n'},
     "s.jsonl:2: missing field 'reward'"),
    ("ilql-episode", f"{TRAIN} method=ilql {ILQL}",
     {"s.jsonl": SCORED + '{"prompt": "1+1=", "completion": "[calc:1+1]2\\n2", "reward": 0.9, '
                          '"messages": [], "tool_calls": 1}\n'},
     "s.jsonl:2: an episode with tools"),
    ("ilql-null-reward", f"{TRAIN} method=ilql {ILQL}",
     {"s.jsonl": SCORED + '{"prompt": "1+1=", "completion": "3", "reward": null}\n'},
     "s.jsonl:2: reward: expected a finite number, got None"),
    ("ilql-nan-reward", f"{TRAIN} method=ilql {ILQL}",
     {"s.jsonl": SCORED + '{"prompt": "1+1=", "completion": "3", "reward": NaN}\n'},
     "s.jsonl:2: reward: expected a finite number, got nan"),
    ("ilql-too-long", f"{TRAIN} method=ilql {ILQL}",
     {"s.jsonl": SCORED + json.dumps({"prompt": "1+1=", "completion": "2" * 300,
                                      "reward": 0.0}) + "\n"},
     "s.jsonl:2: completion: 301 tokens (EOS included) after a 4-token prompt exceed the "
     "model's 256 positions"),
    ("ilql-negative-beta", f"{TRAIN} method=ilql {ILQL} ilql.beta=-1", {"s.jsonl": SCORED},
     "ilql.beta: must be >= 0 and finite"),
    ("eval-nan-beta", "eval tiny --ilql-beta nan --size 2", {},
     "--ilql-beta nan: must be a finite number >= 0"),
    ("ilql-corrupt-heads", "eval {tmp}/m --ilql-beta 1 --size 2",
     {"m/": lambda p: tiny_model_folder(p), "m/ilql.json": '{"beta": 1, "hidden_size": 16, '
      '"vocab_size": 99, "two_qs": true}', "m/ilql_heads.safetensors": "not safetensors"},
     "m: cannot load the ILQL heads"),
    ("ilql-builtin-data", f"{TRAIN} method=ilql", {}, "dataset: method=ilql learns from "
     "scored samples"),
    ("ilql-with-herl", f"{TRAIN} method=ilql+herl {ILQL}", {"s.jsonl": SCORED},
     "method: 'ilql+herl': ilql learns offline"),
    ("bc-nothing-to-imitate", f"{TRAIN} method=filtered_bc {ILQL}",
     {"s.jsonl": '{"prompt": "1+1=", "completion": "3", "reward": 0}\n'},
     "filtered_bc has nothing to imitate"),
    ("eval-beta-without-heads", "eval tiny --ilql-beta 1 --size 2", {},
     "--ilql-beta: tiny has no ILQL heads"),
    ("device-name", f"{TRAIN} device=gpu", {}, "device: 'gpu': expected auto, cpu, cuda"),
    ("ilql-bf16-weights", f"{TRAIN} method=ilql {ILQL} bf16_weights=true", {"s.jsonl": SCORED},
     "bf16_weights: method=ilql trains float32 weights"),
    *([("device-without-gpu", f"{TRAIN} device=cuda", {}, "device=cuda: no CUDA GPU is "
        "visible"),
       ("device-index-without-gpu", f"{TRAIN} device=cuda:1", {}, "device=cuda:1: no CUDA GPU"),
       ("device-ilql-without-gpu", f"{TRAIN} method=ilql {ILQL} device=cuda",
        {"s.jsonl": SCORED}, "device=cuda: no CUDA GPU")]
      if not torch.cuda.is_available() else []),
    # --- the engine and its mismatch correction ----------------------------------------------
    *([("vllm-not-installed", f"{TRAIN} engine=vllm", {}, "engine: vllm is not installed: "
        "pip install -e \".[vllm]\"")] if importlib.util.find_spec("vllm") is None else []),
    ("ilql-with-vllm", f"{TRAIN} method=ilql {ILQL} engine=vllm", {"s.jsonl": SCORED},
     "engine: method=ilql decodes with its value heads" if importlib.util.find_spec("vllm")
     else "engine: vllm is not installed"),
    ("correction-cap", f"{TRAIN} vllm_importance_sampling_cap=0", {},
     "vllm_importance_sampling_cap: must be > 0, got 0"),
    ("correction-mode", f"{TRAIN} vllm_importance_sampling_mode=token", {},
     "vllm_importance_sampling_mode"),
    ("vllm-memory-share", f"{TRAIN} vllm_gpu_memory_utilization=1.5", {},
     "vllm_gpu_memory_utilization: must be in (0, 1], got 1.5"),
    ("vllm-kv-cache", f"{TRAIN} vllm_kv_cache_gb=-1", {}, "vllm_kv_cache_gb: must be > 0"),
    # --- tools and environments --------------------------------------------------------------
    ("env-without-reset", f"{TRAIN} environment_factory=envs:NoReset {SMALL}",
     {"envs.py": "class NoReset:\n    def add(self, x: str) -> str:\n        return x\n"},
     "environment_factory: NoReset has no reset() method"),
    ("env-without-tools", f"{TRAIN} environment_factory=bare_env:Bare {SMALL}",
     {"bare_env.py": "class Bare:\n    def reset(self, **row):\n        return None\n"},
     "environment_factory: Bare has no public method to serve as a tool"),
    ("env-not-importable", f"{TRAIN} environment_factory=nowhere_at_all:Env {SMALL}", {},
     "environment_factory: cannot import 'nowhere_at_all'"),
    ("tool-not-a-function", f"{TRAIN} tools=[calc] {SMALL}", {},
     "tools: 'calc': expected a callable or a 'module:name' string"),
    ("tool-timeout", f"{TRAIN} tool_timeout=0", {}, "tool_timeout: must be > 0"),
    ("hermes-without-template", f"{TRAIN} dataset=calculator tool_call_format=hermes {SMALL}",
     {}, "tool_call_format: hermes renders the tools' answers with the model's chat template"),
    ("unknown-command", "bogus", {}, "bogus"),
    ("no-command", "", {}, "command"),
]


def make_files(root, files):
    """``name: content`` under ``root/in``, or under ``root`` for names starting ``out/``; a
    name ending in ``/`` is a folder, filled by its content (a function of the path) if any."""
    for name, content in files.items():
        path = root / (name if name.startswith("out/") else f"in/{name}")
        path.mkdir(parents=True, exist_ok=True) if name.endswith("/") \
            else path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


# Known bugs (id -> why); strict, so a fix shows up here.
KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize("args,files,expected", [
    pytest.param(*case[1:], id=case[0], marks=[pytest.mark.xfail(strict=True,
                                                                  reason=KNOWN_BUGS[case[0]])]
                 if case[0] in KNOWN_BUGS else [])
    for case in CASES])
def test_bad_input(tmp_path, monkeypatch, capsys, args, files, expected):
    inputs, cwd, out = tmp_path / "in", tmp_path / "cwd", tmp_path / "out"
    inputs.mkdir()
    cwd.mkdir()
    make_files(tmp_path, files)
    monkeypatch.chdir(cwd)  # where relative paths (eval's placeholder output_dir) would land
    monkeypatch.syspath_prepend(str(inputs))  # reward modules written for the case
    # a hub id that is not cached: fail at once instead of retrying the network for ~45 s
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    before = snapshot(inputs), snapshot(out) if out.exists() else None
    argv = args.format(tmp=inputs, out=out).split()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("explorl: error: "), captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert (snapshot(inputs), snapshot(out) if out.exists() else None) == before
    assert list(cwd.iterdir()) == []

"""Training over 2 CPU processes (gloo), DDP, FSDP and DeepSpeed ZeRO-2, launched with the
shipped accelerate configs: the run completes and only the first process writes; the gradient of
a batch split over the processes is the single-process gradient of the whole batch; both
processes hold the same weights; a resumed distributed run continues exactly."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import distributed_update as du

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[1]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ENGINES = ["ddp_cpu", "fsdp_cpu", pytest.param("deepspeed_zero2_cpu", marks=pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="needs deepspeed"))]


def launch(args: list[str], cwd: Path, engine: str = "ddp_cpu", ok: bool = True) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(ROOT / f"configs/accelerate/{engine}.yaml")]
    proc = subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)
    assert (proc.returncode == 0) == ok, proc.stdout[-3000:] + proc.stderr[-3000:]


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_train_on_two_processes(tmp_path, engine):
    run = tmp_path / "run"
    # 3 prompts over 2 processes: shares of 2 and 1 prompts, gathered into one batch
    launch(["-m", "explorl.cli", "train", f"output_dir={run}", "max_steps=3",
            "prompts_per_step=3", "num_generations=4", "eval_size=16", "task_train_size=100",
            "save_every=2", "plots=false", "progress=false", "method=e3", "e3.budget_min=2",
            "e3.budget_max=6", "micro_batch_size=3", "entropy.target_steps=1",
            "log_completions_every=1"], tmp_path, engine)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint-2", "checkpoint-3", "completions.jsonl", "config.yaml", "final",
        "metrics.jsonl", "summary.json"]
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]  # one line per step: the first process only
    for r in rows:  # whole-batch metrics: every prompt's samples, the budget's total
        assert len(r["samples_per_prompt"]) == 3 and sum(r["samples_per_prompt"]) == 12
    assert "eval/accuracy" in rows[-1]
    samples = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 12  # both processes' samples
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["after"] is not None
    # the saved model is whole (FSDP gathers its shards) and the checkpoint matches it
    final = load_file(str(run / "final/model.safetensors"))
    saved = load_file(str(run / "checkpoint-3/model.safetensors"))
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    shapes = {k: v.shape for k, v in load_file(
        str(ROOT / "src/explorl/assets/tiny/model.safetensors")).items()}
    assert {k: v.shape for k, v in final.items()} == shapes


@pytest.mark.parametrize("engine", ENGINES)
def test_stop_before_the_first_update_then_resume(tmp_path, engine):
    """A run stopped at step 1 checkpoints step 0 with no Adam state, as one process does, and
    the resumed run's Adam has counted exactly its own steps."""
    run = tmp_path / "run"
    common = [f"output_dir={run}", "max_steps=2", "prompts_per_step=4", "num_generations=4",
              "eval_size=8", "task_train_size=64", "plots=false", "progress=false"]
    launch(["-m", "explorl.cli", "train", *common,
            "reward_funcs=[tests.helpers.failing:always_raises]"], tmp_path, engine, ok=False)
    saved = load_file(str(run / "checkpoint-0/optimizer.safetensors"))
    assert not [k for k in saved if k.startswith("opt.")]
    launch(["-m", "explorl.cli", "train", *common], tmp_path, engine)
    saved = load_file(str(run / "checkpoint-2/optimizer.safetensors"))
    assert float(saved["opt.0.step"]) == 2


@pytest.fixture(scope="module", params=ENGINES)
def split_run(tmp_path_factory, request):
    out = tmp_path_factory.mktemp(f"split-{request.param}")
    launch(["-m", "tests.helpers.distributed_update", str(out)], ROOT, request.param)
    return out


@pytest.mark.parametrize("case", list(du.CASES))
def test_split_batch_gives_the_whole_batch_gradient(split_run, tmp_path, case):
    trainer = du.trainer_for(case, str(tmp_path / "run"))
    whole, single = du.update(trainer, *du.fixed_batch(trainer))
    ranks = [load_file(str(split_run / f"{case}-rank{r}.safetensors")) for r in (0, 1)]
    assert any(name.startswith("exp_avg.") for name in whole)
    lr = trainer.cfg.learning_rate
    for name, t in whole.items():
        if name.startswith("weight."):
            continue
        # The claim: the same gradient (and Adam moments, linear and quadratic in it). Each
        # process cuts its micro-batches to their own longest row, so shapes and the order of
        # every float32 sum differ: ~1e-5 of the largest term (eps 1.2e-7 over ~1e4 terms),
        # and the terms exceed the sums ~10x (advantages of both signs cancel).
        scale = float(t.abs().max()) or 1.0
        torch.testing.assert_close(ranks[0][name], t, rtol=1e-5, atol=1e-4 * scale, msg=name)
        if name in ranks[1]:  # Adam's gathered state exists on the first process only
            assert torch.equal(ranks[0][name], ranks[1][name]), name  # they agree exactly
    for name, t in whole.items():
        if not name.startswith("weight."):
            continue
        # Adam's first step moves a weight by lr * g / (|g| + eps), at most lr: a gradient
        # component near zero may flip sign between summation orders (at most 2 lr apart);
        # where |g| is well above its float error the steps agree to float precision.
        grad = whole["grad." + name[len("weight."):]]
        torch.testing.assert_close(ranks[0][name], t, rtol=0, atol=2 * lr, msg=name)
        steady = grad.abs() > 1e-4 * float(grad.abs().max())
        torch.testing.assert_close(ranks[0][name][steady], t[steady], rtol=1e-5, atol=1e-6,
                                   msg=name)
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    for r in (0, 1):
        split = json.loads((split_run / f"{case}-rank{r}.json").read_text())
        for key in ("loss", "kl", "entropy", "clip_fraction", "grad_norm",
                    "loss/policy", "loss/revision"):
            assert split[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


def test_every_process_holds_the_whole_collected_batch(split_run):
    parts = [json.loads((split_run / f"collect-rank{r}.json").read_text()) for r in (0, 1)]
    assert parts[0] == parts[1]
    assert parts[0]["groups"] == [g for g, n in enumerate(du.COUNTS) for _ in range(n)]
    assert len(parts[0]["texts"]) == sum(du.COUNTS)


def test_every_process_holds_every_episode(split_run):
    """Multi-turn episodes are played by the process holding their prompt, and gathered whole:
    the tools' tokens, the per-episode counts of both shares."""
    parts = [json.loads((split_run / f"episodes-rank{r}.json").read_text()) for r in (0, 1)]
    assert parts[0] == parts[1]
    episodes = parts[0]
    assert episodes["groups"] == [g for g, n in enumerate(du.COUNTS) for _ in range(n)]
    assert episodes["metrics"]["agent/episodes"] == sum(du.COUNTS)
    assert episodes["tool_tokens"] == episodes["metrics"]["tokens/tool"] > 0


def test_resumed_distributed_run_continues_exactly(split_run):
    def drop(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "eval/"))}
                for r in rows]

    straight = metrics(split_run / "straight")
    assert drop(straight) == drop(metrics(split_run / "resumed"))
    assert sum(r["herl/revisions"] for r in straight[2:]) > 0  # revisions after the resume
    a = load_file(str(split_run / "straight/final/model.safetensors"))
    b = load_file(str(split_run / "resumed/final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shares_are_contiguous_and_balanced():
    from explorl.distributed import Parallel

    p = Parallel()
    p.world = 3
    shares = []
    for p.rank in range(3):
        shares.append(p.share(16))
    assert shares == [slice(0, 6), slice(6, 11), slice(11, 16)]
    p.rank = 2
    assert p.share(2) == slice(2, 2)  # fewer items than processes: an empty share


@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
def test_lora_under_sharded_engines_is_refused(tmp_path, engine):
    from explorl import TrainConfig
    from explorl.distributed import Parallel
    from explorl.errors import UserError

    p = Parallel()
    p.world, p.fsdp, p.deepspeed = 2, engine == "fsdp", engine == "deepspeed"
    with pytest.raises(UserError, match=f"lora_r: LoRA under {p.engine} is not supported"):
        p.refuse_unsupported(TrainConfig(lora_r=4, output_dir=str(tmp_path)))
    p.refuse_unsupported(TrainConfig(output_dir=str(tmp_path)))  # the engine alone is fine


def test_zero_stage_3_is_refused_clearly(monkeypatch):
    from explorl.distributed import Parallel
    from explorl.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(UserError, match="DeepSpeed ZeRO stage 3: not supported, only stages 1 "
                                        "and 2"):
        Parallel()


def test_sigterm_to_one_process_stops_all_at_a_step_with_one_checkpoint(tmp_path):
    """Every process finishes the step in flight; they agree to stop, write one checkpoint and
    print one line; the same command resumes."""
    import signal
    import time

    import psutil

    run, calls = tmp_path / "run", tmp_path / "calls"
    args = ["-m", "explorl.cli", "train", f"output_dir={run}", "max_steps=6",
            "prompts_per_step=2", "num_generations=2", "eval_size=8", "eval_every=0",
            "task_train_size=50", "progress=false", "plots=false", "save_every=100",
            "reward_funcs=tests.helpers.rewards:slow_exact"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
               EXPLORL_TEST_CALLS=str(calls))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs/accelerate/ddp_cpu.yaml"), *args]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    while not (calls.exists() and len(calls.read_text().splitlines()) >= 6):
        assert proc.poll() is None and time.monotonic() - start < 150
        time.sleep(0.02)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "explorl.cli" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=150)
    lines = [x for x in err.splitlines() if x.startswith("explorl:")]
    assert len(lines) == 1 and lines[0].startswith("explorl: interrupted: SIGTERM: saved step")
    step = int(lines[0].split("saved step ")[1].split()[0])
    assert 1 <= step < 6 and (run / f"checkpoint-{step}").exists()
    assert [r["step"] for r in metrics(run)] == list(range(1, step + 1))
    env.pop("EXPLORL_TEST_CALLS")
    launch(args, tmp_path)  # the same command resumes
    assert [r["step"] for r in metrics(run)] == list(range(1, 7))

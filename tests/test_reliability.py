"""Interruption and hostile input: SIGTERM and SIGINT stop with a checkpoint and resume exactly;
one run per output folder; a failing checkpoint write keeps the previous one; over-long prompts
and hung reward functions cost bounded memory and time."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from explorl.cli import main
from explorl.interrupts import Interrupts
from explorl.output_lock import OutputLock

ROOT = Path(__file__).resolve().parents[1]
SLOW = ["max_steps=5", "save_every=100", "prompts_per_step=2", "num_generations=2",
        "eval_size=8", "eval_every=0", "task_train_size=50", "progress=false", "plots=false",
        "reward_funcs=tests.helpers.rewards:slow_exact"]


def env(calls: Path | None = None) -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if calls:
        out["EXPLORL_TEST_CALLS"] = str(calls)
    return out


def train(out: Path, extra=(), calls: Path | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "explorl.cli", "train", f"output_dir={out}",
                             *SLOW, *extra], env=env(calls), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for_calls(calls: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the reward function has been entered ``n`` times (call 1 is the evaluation before
    training, call k + 1 step k's rewards)."""
    t0 = time.monotonic()
    while not (calls.exists() and len(calls.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(("time/", "eval/"))}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_step_saves_the_last_step_and_the_resumed_run_is_exact(tmp_path, sig,
                                                                             code):
    calls, run = tmp_path / "calls", tmp_path / "run"
    proc = train(run, calls=calls)
    wait_for_calls(calls, 4, proc)  # inside step 3's rewards: steps 1 and 2 are done
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert lines == [f"explorl: interrupted: {signal.Signals(sig).name}: saved step 2 in "
                     f"{run}/checkpoint-2; run the same command to resume"]
    assert [p.name for p in run.iterdir() if p.name.startswith(("checkpoint", ".tmp"))] == [
        "checkpoint-2"] and not (run / ".lock").exists()
    assert [r["step"] for r in metrics(run)] == [1, 2]  # the abandoned step left no line
    if sig == signal.SIGINT:
        return
    assert train(run).wait(timeout=300) == 0  # the same command resumes
    straight = tmp_path / "straight"
    assert train(straight).wait(timeout=300) == 0
    assert metrics(run) == metrics(straight)
    a = load_file(str(run / "final/model.safetensors"))
    b = load_file(str(straight / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    interrupts = Interrupts()
    with interrupts.installed(can_abandon=True):
        interrupts._handle(signal.SIGTERM, None)  # outside a step: recorded
        assert interrupts.received == signal.SIGTERM and exits == []
        interrupts._handle(signal.SIGTERM, None)
    assert exits == [143]


def test_a_signal_abandons_only_before_the_weights_change():
    from explorl.interrupts import StepAbandoned

    interrupts = Interrupts()
    with pytest.raises(StepAbandoned), interrupts.abandonable():
        interrupts._handle(signal.SIGINT, None)
    interrupts = Interrupts()
    with interrupts.abandonable():
        interrupts.close()  # the update is about to change the weights
        interrupts._handle(signal.SIGINT, None)  # recorded; the step goes on
    assert interrupts.received == signal.SIGINT


def snapshot(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


def test_one_run_per_output_folder_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=1", "prompts_per_step=2",
            "num_generations=2", "eval_size=4", "task_train_size=20", "progress=false",
            "plots=false"]
    holder = OutputLock(run)
    holder.acquire()  # another run holds the folder
    before = snapshot(run)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"explorl: error: output_dir: {run} is in use by process {os.getpid()} "
                   f"(lock {run}/.lock); wait for that run to end, stop it, or choose another "
                   "output_dir"]
    assert snapshot(run) == before  # nothing written
    holder.release()
    (run / ".lock").write_text("999999\n")  # left by a process killed with SIGKILL
    assert main(args) == 0
    assert not (run / ".lock").exists() and (run / "final").exists()


def test_a_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    import explorl.checkpoint as checkpoint

    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "max_steps=4", "save_every=2", "prompts_per_step=2",
            "num_generations=2", "eval_size=4", "task_train_size=20", "progress=false",
            "plots=false"]
    real = checkpoint.save_file

    def disk_full(tensors, path):
        if "checkpoint-4" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    assert main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"explorl: stopped: could not write {run}/checkpoint-4 (No space left on "
                   f"device); {run}/checkpoint-2 is intact; free space (or fix the folder) and "
                   "run the same command to resume"]
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed: the same command resumes
    assert main(args) == 0
    straight = tmp_path / "straight"
    assert main([*args[:1], f"output_dir={straight}", *args[2:]]) == 0
    # checkpoint-2 was whole: the resumed run is the uninterrupted one
    assert metrics(run) == metrics(straight)


def test_a_ten_megabyte_prompt_costs_bounded_memory(tmp_path):
    data = tmp_path / "big.jsonl"
    row = {"prompt": "1+" * 5_000_000 + "1=", "answer": "5000001"}
    data.write_text(json.dumps(row) + "\n" + json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    code = ("import resource, sys; from explorl.cli import main; "
            f"rc = main(['train', 'output_dir={tmp_path / 'run'}', 'dataset={data}', "
            "'reward_funcs=arithmetic', 'max_steps=1', 'progress=false']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert "max_prompt_length/max_completion_length: prompts of 512 tokens" in r.stderr
    # 10 MB of text, parsed once; tokenised whole it took 4.2 GB
    assert int(r.stdout.split()[-1]) < 1_500_000  # kB


def test_prompts_are_cut_to_their_last_tokens_exactly():
    from explorl.data.prompts import PromptCodec
    from explorl.models.policy import load_tokenizer

    tok = load_tokenizer("tiny")
    codec = PromptCodec(tok, max_prompt_length=64)
    text = "".join(f"{i}+" for i in range(40_000)) + "7="
    assert codec.encode(text) == tok(text, add_special_tokens=False).input_ids[-64:]
    assert codec.max_chars < 1000


def test_a_hung_reward_function_is_timed_out_masked_and_counted(tmp_path):
    from explorl import TrainConfig, Trainer
    from explorl.errors import TrainingStopped
    from tests.helpers.rewards import sleeps_forever

    common = dict(max_steps=2, prompts_per_step=2, num_generations=2, eval_size=4,
                  task_train_size=20, progress=False, plots=False, reward_timeout=0.2)
    start = time.monotonic()
    Trainer(TrainConfig(output_dir=str(tmp_path / "a"), reward_funcs=["arithmetic",
                                                                       sleeps_forever],
                        reward_failure_limit=1.0, **common)).train()
    rows = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert [r["rewards/failed"] for r in rows] == [4, 4]  # every sample of both steps
    with pytest.raises(TrainingStopped, match="no answer within reward_timeout=0.2 s"):
        Trainer(TrainConfig(output_dir=str(tmp_path / "b"), reward_funcs=[sleeps_forever],
                            **common)).train()
    assert time.monotonic() - start < 60  # the functions sleep an hour: nothing waited for them


def test_no_held_out_set_is_said_plainly(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                            for i in range(8)))
    assert main(["train", f"output_dir={tmp_path / 'run'}", f"dataset={data}",
                 "reward_funcs=arithmetic", "max_steps=1", "prompts_per_step=2",
                 "num_generations=2", "progress=false", "plots=false"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    assert "held-out: none evaluated (no held-out set was given; eval_dataset=FILE evaluates " \
           "one before and after training)" in out


def test_an_unknown_command_is_named_once(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bogus"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err.startswith("explorl: error: argument command: invalid choice: 'bogus'")

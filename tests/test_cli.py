"""The command line: the default run's outputs, resume, eval --json, and bad input."""

import json
import subprocess
import sys

import pytest

FAST = ["eval_size=40", "task_train_size=400", "progress=false"]


def explorl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "explorl.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_train_writes_outputs_and_resumes(tmp_path):
    out = tmp_path / "run"
    r = explorl("train", f"output_dir={out}", "max_steps=4", "save_every=2", *FAST)
    assert r.returncode == 0, r.stderr
    assert "held-out (greedy, %)" in r.stdout and "before" in r.stdout
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "final/model.safetensors",
                 "final/config.json", "checkpoint-4/state.json", "plots/reward.png",
                 "plots/accuracy.png", "plots/entropy.png", "plots/completion_length.png"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint-2").exists() or (out / "checkpoint-4").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["before"]) >= {"accuracy", "by_level"}
    assert summary["steps"] == 4
    # same command, more steps: resumes from checkpoint-4, metrics continue 5..6
    r = explorl("train", f"output_dir={out}", "max_steps=6", "save_every=2", *FAST)
    assert r.returncode == 0, r.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "summary.json").read_text())["before"] == summary["before"]
    # a run directory evaluates its final model
    r = explorl("eval", str(out), "--json", "--size", "40", "--pass-k", "1")
    assert r.returncode == 0, r.stderr
    after = json.loads((out / "summary.json").read_text())["after"]["accuracy"]
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(after)


def test_eval_json(tmp_path):
    r = explorl("eval", "tiny", "--json", "--size", "32", "--pass-k", "1,4")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert 0 <= result["accuracy"] <= 1
    assert set(result["pass_at_k"]) == {"1", "4"}
    assert result["pass_at_k"]["4"] >= result["pass_at_k"]["1"]


@pytest.mark.parametrize("args,fragment", [
    (["bogus=1"], "unknown config key 'bogus'"),
    (["max_steps=abc"], "max_steps: expected an integer"),
    (["dataset=missing.jsonl", "reward_funcs=arithmetic"], "file not found"),
    (["reward_funcs=no_such_module_xyz:fn"], "cannot import 'no_such_module_xyz'"),
    (["model=/nonexistent/model"], "model=/nonexistent/model"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, fragment):
    out = tmp_path / "run"
    r = explorl("train", f"output_dir={out}", *args)
    assert r.returncode == 2
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_jsonl_line_and_missing_column(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", \n')
    r = explorl("train", f"output_dir={tmp_path / 'o'}", f"dataset={data}",
                "reward_funcs=arithmetic")
    assert r.returncode == 2 and f"{data}:2:" in r.stderr
    data.write_text('{"question": "1+1="}\n')
    r = explorl("train", f"output_dir={tmp_path / 'o'}", f"dataset={data}",
                "reward_funcs=arithmetic")
    assert r.returncode == 2 and "prompt" in r.stderr and ":1:" in r.stderr
    assert not (tmp_path / "o").exists()

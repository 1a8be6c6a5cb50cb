import json
import math
import sys
import types

import pytest

from explorl.errors import UserError
from explorl.tracking import Trackers, log_completions, read_metrics, truncate_metrics


def test_completions_table(tmp_path):
    path = tmp_path / "completions.jsonl"
    chat = [{"role": "user", "content": "2+2?"}]
    log_completions(path, 5, ["1+1=", chat], ["2", [{"role": "assistant", "content": "4"}]],
                    [1.0, math.nan], [0.5, 0.0])
    log_completions(path, 10, ["3+3="], ["6"], [1.0], [0.25])
    rows = read_metrics(path)
    assert rows[0] == {"step": 5, "prompt": "1+1=", "completion": "2", "reward": 1.0,
                       "advantage": 0.5}
    assert rows[1]["prompt"] == chat and rows[1]["reward"] is None
    assert [r["step"] for r in rows] == [5, 5, 10]
    truncate_metrics(path, 5)  # a resume from step 5 drops the later lines
    assert [r["step"] for r in read_metrics(path)] == [5, 5]


def test_completions_lists_must_align(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        log_completions(tmp_path / "c.jsonl", 1, ["a", "b"], ["x"], [1.0], [0.0])


def test_tensorboard_writes_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Trackers(["tensorboard"], tmp_path) as trackers:
        for step in (1, 2, 3):
            trackers.log({"step": step, "reward/mean": 0.1 * step, "kl": None,
                          "entropy": math.nan, "note": "text"}, step=step)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["reward/mean"]
    values = [(e.step, round(e.value, 6)) for e in acc.Scalars("reward/mean")]
    assert values == [(1, 0.1), (2, 0.2), (3, 0.3)]


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.id = kwargs.get("id") or "run123"
        self.logged, self.finished = [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_run_logs_and_resumes(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    run_dir = tmp_path / "my-run"
    with Trackers(["wandb"], run_dir, config={"lr": 1e-5}) as trackers:
        trackers.log({"step": 1, "reward/mean": 0.5, "kl": None}, step=1)
    run = fake_wandb[0]
    assert run.init["project"] == "proj" and run.init["name"] == "my-run"
    assert run.init["config"] == {"lr": 1e-5} and run.init["id"] is None
    assert run.logged == [(1, {"reward/mean": 0.5})] and run.finished
    assert (run_dir / "wandb_run_id").read_text() == "run123"
    Trackers(["wandb"], run_dir, resume=True).close()
    assert fake_wandb[1].init["id"] == "run123" and fake_wandb[1].init["resume"] == "allow"
    Trackers(["wandb"], run_dir, resume=False).close()
    assert fake_wandb[2].init["id"] is None


def test_missing_wandb_names_report_to(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails as if not installed
    with pytest.raises(UserError, match="report_to: wandb is not installed"):
        Trackers(["wandb"], tmp_path)


def test_unknown_tracker_and_none(tmp_path):
    with pytest.raises(UserError, match="report_to: unknown tracker 'mlflow'"):
        Trackers(["mlflow"], tmp_path)
    with Trackers([], tmp_path) as trackers:
        trackers.log({"reward/mean": 1.0}, step=1)
    assert not any(tmp_path.iterdir())


def test_metrics_stay_json(tmp_path):
    path = tmp_path / "completions.jsonl"
    log_completions(path, 1, ["é"], ["ü"], [1], [0])
    assert json.loads(path.read_text(encoding="utf-8"))["prompt"] == "é"


def test_missing_tensorboard_names_report_to(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="report_to: tensorboard needs the tensorboard package"):
        Trackers(["tensorboard"], tmp_path)

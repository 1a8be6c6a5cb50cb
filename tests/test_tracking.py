import json
import math

import pytest

from explorl.errors import UserError
from explorl.report import aggregate
from explorl.tracking import (
    MetricsLog,
    Progress,
    format_table,
    moving_average,
    plot_run,
    read_metrics,
    truncate_metrics,
)

STEPS = 40
TOKENS_PER_STEP = 1000


def _write_run(
    run_dir,
    *,
    seed,
    after_acc,
    before_acc=0.2,
    temperature=None,
    kl=True,
    pass_at_k=None,
    eval_every=10,
):
    run_dir.mkdir(parents=True)
    with MetricsLog(run_dir / "metrics.jsonl", append=False) as log:
        for step in range(1, STEPS + 1):
            frac = step / STEPS
            rec = {
                "step": step,
                "reward/mean": 0.2 + 0.5 * frac + 0.01 * ((step * (seed + 3)) % 7 - 3),
                "reward/std": 0.3,
                "accuracy": 0.1 + 0.6 * frac,
                "entropy": 1.5 - frac,
                "completion_length/mean": 20 + step,
                "tokens/generated": TOKENS_PER_STEP + seed,
                "tokens/total": step * (TOKENS_PER_STEP + seed),
                "temperature": 1.0 if temperature is None else temperature(step),
            }
            if kl:
                rec["kl"] = 0.001 * step
            if step % eval_every == 0:
                rec["eval/accuracy"] = 0.1 + 0.5 * frac
            log.write(rec)
    after = {"accuracy": after_acc}
    if pass_at_k:
        after["pass_at_k"] = pass_at_k
    summary = {
        "before": {"accuracy": before_acc},
        "after": after,
        "steps": STEPS,
        "tokens_generated": STEPS * (TOKENS_PER_STEP + seed),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_metrics_log_roundtrip(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"
    log = MetricsLog(path, append=False)
    log.write(
        {
            "step": 1,
            "loss": 0.123456789,
            "kl": float("nan"),
            "g": float("inf"),
            "tokens/total": 123456789,
            "ok": True,
            "nested": {"x": [1.0000004, -float("inf")]},
        }
    )
    # flushed before close
    assert read_metrics(path)[0]["step"] == 1
    log.write({"step": 2, "loss": 1e-9 / 3})
    log.close()
    log.close()
    recs = read_metrics(path)
    assert recs[0] == {
        "step": 1,
        "loss": 0.123457,
        "kl": None,
        "g": None,
        "tokens/total": 123456789,
        "ok": True,
        "nested": {"x": [1.0, None]},
    }
    assert recs[1]["loss"] == pytest.approx(3.33333e-10, rel=1e-9)
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()

    with MetricsLog(path, append=True) as log:
        log.write({"step": 3})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    with MetricsLog(path, append=False) as log:
        log.write({"step": 7})
    assert read_metrics(path) == [{"step": 7}]


def test_read_metrics_skips_partial_line_and_missing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, append=False) as log:
        for step in range(1, 11):
            log.write({"step": step, "loss": step / 10})
    truncate_metrics(path, 6)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5, 6]
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    truncate_metrics(path, 0)
    assert read_metrics(path) == []
    truncate_metrics(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()


def test_moving_average():
    y = [0.0, 0.0, 3.0, 0.0, 0.0]
    assert list(moving_average(y, 1)) == y
    sm = moving_average(y, 3)
    assert sm.tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0, 0.0])


def test_plot_run_writes_expected_files(tmp_path):
    run = _write_run(tmp_path / "run", seed=0, after_acc=0.5)
    paths = plot_run(run)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        ["reward.png", "accuracy.png", "entropy.png", "kl.png", "completion_length.png"]
    )
    for p in paths:
        assert p.parent == run / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "plots" / "temperature.png").exists()


def test_plot_run_temperature_and_missing_keys(tmp_path):
    run = _write_run(
        tmp_path / "run", seed=1, after_acc=0.5, kl=False, temperature=lambda s: 1.0 - 0.01 * s
    )
    names = {p.name for p in plot_run(run)}
    assert "temperature.png" in names
    assert "kl.png" not in names
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot_run(empty) == []


def test_progress_and_format_table():
    with Progress(total=5, initial=2, enabled=False) as bar:
        bar.update({"reward/mean": 0.5, "accuracy": 0.25, "entropy": float("nan")})
        bar.update({})
        assert bar.n == 4
    bar = Progress(total=3, enabled=True, desc="test")
    bar.update({"reward/mean": 0.1})
    bar.close()

    text = format_table([["grpo", "60.0"], ["dr_grpo_long", "7.5"]], ["label", "acc"])
    lines = text.splitlines()
    assert lines[0].startswith("label")
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2] == "grpo          60.0"
    assert lines[3] == "dr_grpo_long   7.5"
    with pytest.raises(ValueError):
        format_table([["a", "b", "c"]], ["x", "y"])


@pytest.fixture
def groups(tmp_path):
    accs = {"grpo": [0.5, 0.6, 0.7], "dr_grpo": [0.6, 0.65, 0.9]}
    out = {}
    for label, values in accs.items():
        out[label] = [
            _write_run(
                tmp_path / "runs" / f"{label}_s{seed}",
                seed=seed,
                after_acc=acc,
                pass_at_k={"1": acc, "4": acc + 0.1} if label == "grpo" else None,
            )
            for seed, acc in enumerate(values)
        ]
    return out


def test_aggregate_numbers_table_and_plots(tmp_path, groups):
    out = tmp_path / "compare"
    table = aggregate(groups, out)

    grpo = table["labels"]["grpo"]
    acc = grpo["after_accuracy"]
    assert acc["mean"] == pytest.approx(0.6)
    assert acc["std"] == pytest.approx(0.1)
    assert acc["min"] == pytest.approx(0.5)
    assert acc["max"] == pytest.approx(0.7)
    assert grpo["before_accuracy"]["mean"] == pytest.approx(0.2)
    assert grpo["pass_at_k"]["4"]["mean"] == pytest.approx(0.7)
    assert grpo["tokens_generated"]["mean"] == pytest.approx(STEPS * (TOKENS_PER_STEP + 1))
    assert [s["after"] for s in grpo["seeds"]] == [0.5, 0.6, 0.7]
    assert grpo["seeds"][0]["run"].endswith("grpo_s0")

    dr = table["labels"]["dr_grpo"]["after_accuracy"]
    vals = [0.6, 0.65, 0.9]
    mean = sum(vals) / 3
    assert dr["mean"] == pytest.approx(mean)
    assert dr["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in vals) / 2))
    assert table["labels"]["dr_grpo"]["pass_at_k"] == {}

    assert json.loads((out / "table.json").read_text()) == table
    md = (out / "table.md").read_text()
    assert "grpo" in md and "dr_grpo" in md
    assert "60.0 ± 10.0" in md
    assert "50.0–70.0" in md
    assert "pass@1" in md and "pass@4" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # header + one per label

    for name in [
        "accuracy_vs_tokens.png",
        "reward_mean_vs_tokens.png",
        "entropy_vs_tokens.png",
        "completion_length_mean_vs_tokens.png",
        "eval_accuracy_vs_tokens.png",
    ]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_aggregate_single_seed_and_errors(tmp_path, groups):
    table = aggregate({"one": groups["grpo"][:1]}, tmp_path / "single", metrics=("kl",))
    acc = table["labels"]["one"]["after_accuracy"]
    assert acc["std"] == 0.0 and acc["mean"] == pytest.approx(0.5)
    assert (tmp_path / "single" / "kl_vs_tokens.png").exists()
    assert not (tmp_path / "single" / "accuracy_vs_tokens.png").exists()

    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(UserError, match="summary.json"):
        aggregate({"x": [bare]}, tmp_path / "bad")

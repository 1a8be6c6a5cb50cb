"""explorl compare: configurations x seeds -> one table; finished runs are reused."""

import json

import pytest

from explorl.compare import parse_spec, run_compare
from explorl.errors import UserError

SMALL = ["max_steps=2", "prompts_per_step=4", "num_generations=4", "eval_size=24",
         "task_train_size=200", "save_every=0", "plots=false"]


def test_parse_spec():
    assert parse_spec("dr_grpo")[1] == ["loss_type=dr_grpo", "advantage_estimator=dr_grpo"]
    assert parse_spec("hot:temperature=1.5,beta=0.1") == ("hot", ["temperature=1.5", "beta=0.1"])
    assert parse_spec("grpo+dapo")[1][-1] == "epsilon_high=0.28"
    # methods of joined presets are joined, not overwritten
    assert parse_spec("herl_original+e3_temperature")[1] == [
        "herl.teach=revise", "herl.context=original", "e3.budget=false", "method=herl+e3"]
    from explorl.config import load_config

    for name in ("gspo", "cispo", "e3_budget_mixed", "herl_blank", "herl+e3", "ppo+e3",
                 "herl_luffy", "herl_sft", "herl_reference+herl_blank", "herl_negatives"):
        load_config(None, parse_spec(name)[1])  # every preset is a valid configuration
    assert parse_spec("ppo+e3")[1] == ["method=ppo+e3"]
    for name in ("ilql", "filtered_bc"):  # offline: valid once given scored samples
        load_config(None, [*parse_spec(name)[1], "dataset=s.jsonl"])
    with pytest.raises(UserError, match="unknown preset 'bogus'"):
        parse_spec("bogus")


def test_compare_runs_every_seed_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "cmp"
    table = run_compare(["grpo", "hot:temperature=1.5"], seeds=2, overrides=SMALL,
                        out_dir=str(out))
    assert set(table["labels"]) == {"grpo", "hot"}
    for label in ("grpo", "hot"):
        seeds = table["labels"][label]["seeds"]
        assert len(seeds) == 2
        for k in (0, 1):
            summary = json.loads((out / label / f"seed{k}" / "summary.json").read_text())
            assert summary["steps"] == 2
    assert "grpo" in (out / "table.md").read_text()
    assert (out / "accuracy_vs_tokens.png").exists()
    stamp = (out / "grpo" / "seed0" / "summary.json").stat().st_mtime_ns
    run_compare(["grpo"], seeds=1, overrides=SMALL, out_dir=str(out))
    assert (out / "grpo" / "seed0" / "summary.json").stat().st_mtime_ns == stamp


def test_bad_spec_fails_before_any_run(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        run_compare(["grpo", "x:nope=1"], seeds=1, overrides=SMALL, out_dir=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()

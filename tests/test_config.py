"""Config loading: YAML + overrides, types, and one-line errors naming where."""

import pytest

from explorl.config import TrainConfig, load_config
from explorl.errors import UserError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\nlearning_rate: 2.0e-4\nepsilon_high: 0.28\n")
    cfg = load_config(path, ["num_generations=4", "learning_rate=1e-5", "dual_clip=3",
                             "reward_funcs=a:b,c:d", "epsilon_high=none"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.max_steps == 7 and cfg.num_generations == 4
    assert cfg.learning_rate == 1e-5 and cfg.dual_clip == 3.0
    assert cfg.reward_funcs == ["a:b", "c:d"] and cfg.epsilon_high is None
    assert cfg.temperature == 1.0 and cfg.method == "grpo" and cfg.resume == "auto"


def test_none_is_a_choice_or_a_null_by_field_type():
    cfg = load_config(None, ["scale_rewards=none", "dual_clip=none", "epsilon_high=null"])
    assert cfg.scale_rewards == "none"
    assert cfg.dual_clip is None and cfg.epsilon_high is None


@pytest.mark.parametrize("text,overrides,fragment", [
    ("max_steps: 5\nbogus_key: 1\n", [], "c.yaml:2: unknown config key 'bogus_key'"),
    ("max_steps: five\n", [], "c.yaml:1: max_steps: expected an integer"),
    ("loss_type: ppo\n", [], "c.yaml:1: loss_type: 'ppo' is not one of"),
    ("", ["temperature=0"], "override 'temperature=0': temperature: must be > 0"),
    ("", ["num_generations=1"], "num_generations: at least 2 generations per prompt"),
    ("", ["nope=1"], "override 'nope=1': unknown config key 'nope'"),
    ("", ["dual_clip=0.5"], "dual_clip: must be > 1"),
    ("max_steps: [1\n", [], "c.yaml:2: invalid YAML"),
    ("- a\n- b\n", [], "c.yaml:1: the config must be a mapping"),
    ("", ["reward_weights=1,2"], "reward_weights: 2 weights for 0 reward functions"),
])
def test_bad_config_names_where(tmp_path, text, overrides, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_sections_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: herl+e3\nherl:\n  gamma: 2\n  accept: equal\ne3:\n  budget_min: 2\n")
    cfg = load_config(path, ["herl.gamma=0.5", "e3.adaptive_temperature=false"])
    assert cfg.herl.gamma == 0.5 and cfg.herl.accept == "equal"  # the override wins
    assert cfg.e3.budget_min == 2 and cfg.e3.adaptive_temperature is False
    assert cfg.algorithm == "grpo" and cfg.uses("herl") and cfg.uses("e3")
    assert not load_config(None, []).uses("herl")


def test_a_saved_config_loads_back(tmp_path):
    from explorl.config import save_config

    cfg = load_config(None, ["method=herl", "herl.gamma=2", "judge.timeout=5",
                             "reward_funcs=rubric", "eval_pass_k=1,4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("method,fragment", [
    ("herl+herl", "method: 'herl+herl'"),
    ("ppo2", "method: 'ppo2'"),
    ("", "method: ''"),
])
def test_method_names_one_algorithm_and_known_methods(method, fragment):
    with pytest.raises(UserError) as e:
        load_config(None, [f"method={method}"])
    assert fragment + ": expected one algorithm (grpo, ppo, ilql, filtered_bc)" in str(e.value)


def test_every_key_is_checked_in_python_too(tmp_path):
    from explorl.config import HeRLConfig, validate

    with pytest.raises(UserError, match="herl.candidate_limit: must be >= 1"):
        validate(TrainConfig(output_dir=str(tmp_path), herl=HeRLConfig(candidate_limit=0)))
    with pytest.raises(UserError, match="herl: expected a HeRLConfig"):
        validate(TrainConfig(output_dir=str(tmp_path), herl={"gamma": 2}))


def test_train_help_lists_every_key_by_section(capsys):
    import dataclasses

    from explorl.cli import main
    from explorl.config import (
        DynamicSamplingConfig,
        E3Config,
        EntropyConfig,
        HeRLConfig,
        ILQLConfig,
        JudgeConfig,
        PPOConfig,
    )

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "  herl.gamma: float = 1.0\n      Shaping of revision tokens' ratio" in text
    assert "  loss_type: grpo|dapo|dr_grpo|cispo = 'dapo'" in text
    sections = ("herl", "e3", "judge", "ppo", "ilql", "entropy", "dynamic_sampling")
    for prefix, cls in (("", TrainConfig), ("herl.", HeRLConfig), ("e3.", E3Config),
                        ("judge.", JudgeConfig), ("ppo.", PPOConfig), ("ilql.", ILQLConfig),
                        ("entropy.", EntropyConfig),
                        ("dynamic_sampling.", DynamicSamplingConfig)):
        for f in dataclasses.fields(cls):
            if f.name not in sections:
                assert f"  {prefix}{f.name}: " in text, f.name
    assert "\nherl: HeRL, learning from failure with hindsight" in text

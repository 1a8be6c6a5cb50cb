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
    ("", ["num_generations=1"], "num_generations: group-relative advantages need at least 2"),
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

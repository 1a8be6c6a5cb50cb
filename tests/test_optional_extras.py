"""Each optional extra, when absent, fails with one line that says what to install."""

import sys

import pytest

from explorl.data import champ, gym
from explorl.errors import UserError
from explorl.models import lora


def test_gym_without_reasoning_gym(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(UserError, match="dataset: reasoning_gym:<task> needs .*reasoning-gym"):
        gym.gym_rows("countdown", 2)


def test_champ_without_champ_dataset(monkeypatch):
    monkeypatch.setitem(sys.modules, "champ_dataset", None)
    champ._load.cache_clear()
    try:
        with pytest.raises(UserError, match="dataset: champ needs .*champ-dataset"):
            champ.champ_rows()
    finally:
        champ._load.cache_clear()


def test_lora_without_peft(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(UserError, match="lora_r: LoRA needs the peft package"):
        lora.apply_lora(object())

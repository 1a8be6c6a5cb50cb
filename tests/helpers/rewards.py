"""Reward functions used by the tests (importable as ``tests.helpers.rewards:name``)."""


def starts_with_one(prompts, completions, completion_ids=None, **columns):
    """A trivial task: reward completions that start with the digit 1."""
    return [1.0 if c.startswith("1") else 0.0 for c in completions]


def length_two(prompts, completions, completion_ids=None, **columns):
    return [1.0 if len(c.strip()) == 2 else 0.0 for c in completions]

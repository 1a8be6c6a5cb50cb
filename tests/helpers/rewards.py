"""Reward functions used by the tests (importable as ``tests.helpers.rewards:name``)."""


def starts_with_one(prompts, completions, completion_ids=None, **columns):
    """A trivial task: reward completions that start with the digit 1."""
    return [1.0 if c.startswith("1") else 0.0 for c in completions]


def length_two(prompts, completions, completion_ids=None, **columns):
    return [1.0 if len(c.strip()) == 2 else 0.0 for c in completions]


def slow_exact(prompts, completions, completion_ids=None, answer=(), **columns):
    """Exact match, 0.3 s per call; with ``EXPLORL_TEST_CALLS`` set, each call first appends a
    line to that file, so a test can tell which call (and so which step) is in flight."""
    import os
    import time

    calls = os.environ.get("EXPLORL_TEST_CALLS")
    if calls:
        with open(calls, "a") as fh:
            fh.write(".\n")
    time.sleep(0.3)
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]


def sleeps_forever(prompts, completions, completion_ids=None, **columns):
    import time

    time.sleep(3600)
    return [0.0] * len(completions)

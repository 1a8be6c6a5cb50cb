"""A reward function that always fails (importable as ``tests.helpers.failing:always_raises``)."""


def always_raises(prompts, completions, completion_ids=None, **columns):
    raise RuntimeError("grader down")

"""SIGKILL a training run at a random moment, run the same command again, and get the run an
uninterrupted one produces: same final weights bit for bit, same metrics rows."""

import random

from tests.helpers.kill_resume import differences, run_to_end, start_and_kill


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_end(straight)
    # after the first checkpoint, somewhere in the ~1.5 s of training, checkpoint writes included
    delay = random.Random(7).uniform(0.0, 0.6)
    kill = start_and_kill(killed, delay)
    assert kill.killed, f"the run finished before the kill at +{delay:.2f} s"
    assert kill.resumed_from >= 1
    run_to_end(killed)
    assert differences(straight, killed) == []

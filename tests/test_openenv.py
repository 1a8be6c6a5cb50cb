"""environment_factory=openenv:<url> against a real OpenEnv server on 127.0.0.1
(``tests/helpers/openenv_server.py``: guess the digit 7): sessions, observations and rewards
through the episode loop, training against it, and a server that goes away (episodes masked,
then the run stops with a checkpoint). Skipped where openenv-core is not installed
(``scripts/openenv_tests.sh`` runs them)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("openenv.core")
pytestmark = pytest.mark.openenv

from explorl import TrainConfig, Trainer  # noqa: E402
from explorl.agents.formats import TaggedFormat  # noqa: E402
from explorl.agents.openenv import openenv_factory  # noqa: E402
from explorl.agents.rollout import AgentCollector  # noqa: E402
from explorl.cli import main  # noqa: E402
from explorl.data.prompts import PromptCodec  # noqa: E402
from explorl.distributed import Parallel  # noqa: E402
from explorl.models.policy import load_tokenizer  # noqa: E402
from explorl.rewards.base import Scorer  # noqa: E402
from tests.test_agents import Scripted  # noqa: E402

SERVER = Path(__file__).parent / "helpers" / "openenv_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the OpenEnv test server did not start")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    yield f"http://127.0.0.1:{port}"
    proc.kill()


def guesser(context: str) -> str:
    """Guesses 3, then follows the environment's hint, then stops."""
    if context.endswith("(guess a digit)"):
        return "[act:3]"
    if context.endswith("higher\n"):
        return "[act:7]"
    return "ok<eos>"


def no_reward(prompts, completions, **_):
    return [0.0] * len(completions)


def test_episodes_are_sessions_with_the_server(server):
    tok = load_tokenizer("tiny")
    codec = PromptCodec(tok)
    scorer = Scorer([("none", no_reward)], [1.0], codec)
    collector = AgentCollector(Scripted(tok, guesser), scorer, tok, Parallel("cpu"), "cpu",
                               fmt=TaggedFormat(tok), codec=codec,
                               environment_factory=openenv_factory(f"openenv:{server}",
                                                                   "guess"))
    rows = [{"prompt": "game:"}] * 3
    batch = collector(rows, [codec.encode(r["prompt"]) for r in rows], [2, 2, 2], [1.0] * 3, 40)
    assert batch.texts[0] == "[act:3]higher\n[act:7]right\nok"
    assert batch.rollout.prompt(0) == codec.encode("game: (guess a digit)")
    assert batch.rewards.per_func["environment"].tolist() == [1.0] * 6
    assert batch.metrics["agent/tool_calls"] == 12 and batch.metrics["agent/tool_errors"] == 0


def test_training_against_the_server_then_it_goes_away(tmp_path, capsys):
    port = free_port()
    proc = start_server(port)
    common = dict(dataset="arithmetic", environment_factory=f"openenv:http://127.0.0.1:{port}",
                  openenv_action_field="guess", max_completion_length=24, prompts_per_step=4,
                  num_generations=4, eval_size=4, task_train_size=32, progress=False,
                  plots=False, save_every=1, eval_every=0, max_steps=2)
    try:  # the real tiny model: its calls are rare and malformed, the loop must hold
        Trainer(TrainConfig(output_dir=str(tmp_path / "a"), **common)).train()
        rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text()
                .splitlines()]
        assert rows[-1]["step"] == 2 and rows[-1]["agent/failed_episodes"] == 0
        assert "reward/environment/mean" in rows[0]
    finally:
        proc.kill()
        proc.wait()
    out = tmp_path / "b"
    args = ["train", *(f"{k}={v}" for k, v in common.items()), f"output_dir={out}"]
    assert main(args) == 3  # every episode failed: the run stops after a checkpoint
    assert "explorl: stopped:" in capsys.readouterr().err
    assert (out / "checkpoint-0").is_dir() or any(out.glob("checkpoint-*"))

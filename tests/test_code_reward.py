"""The sandboxed code reward: correct code scores 1, anything else 0, and hostile code is
stopped (time, memory, file size, processes, network, environment, files outside its folder)."""

import os
import socket
import time
import uuid

import pytest

from explorl.rewards.base import resolve
from explorl.rewards.code import extract_code, make_code_reward

TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"
ADD = "def add(a, b):\n    return a + b\n"


@pytest.fixture
def sandbox_root(tmp_path):
    root = tmp_path / "sandboxes"
    root.mkdir()
    return root


@pytest.fixture
def reward(sandbox_root):
    return make_code_reward(cpu_seconds=1, wall_seconds=2, memory_mb=256,
                            tmp_root=str(sandbox_root))


def score(reward, code, tests=TESTS):
    return reward([""], [code], tests=[tests])[0]


def test_extracts_fenced_or_raw_code():
    assert extract_code("Sure:\n```python\nx = 1\n```\nand\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\nz = 3\n```") == "z = 3\n"
    assert extract_code("```text\nno\n```\n```py\nw = 4\n```") == "w = 4\n"
    assert extract_code("x = 1") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code([{"role": "assistant", "content": "```python\nv = 5\n```"}]) == "v = 5\n"


def test_correct_wrong_and_missing_tests(reward, sandbox_root):
    completions = [ADD, f"Here you go:\n```python\n{ADD}```", "def add(a, b):\n    return a - b",
                   "def add(a, b) return", ADD]
    tests = [TESTS, [t for t in TESTS.splitlines()], TESTS, TESTS, None]
    assert reward(["p"] * 5, completions, tests=tests) == [1.0, 1.0, 0.0, 0.0, None]
    assert reward(["p"], [ADD]) == [None]  # no tests column at all
    assert list(sandbox_root.iterdir()) == []  # every temporary folder is gone


def test_builtin_name():
    name, fn = resolve("code")
    assert name == "code" and fn([""], [ADD], tests=[TESTS]) == [1.0]


@pytest.mark.parametrize("code", [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "raise SystemExit(0)\n",
    "exit()\n",
    "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False\n",
    "print('\\n' * 3)\nimport os\nos.write(1, b'0' * 32 + b'\\n')\nos._exit(0)\n",
])
def test_exiting_early_with_status_0_does_not_pass(reward, code):
    assert score(reward, code) == 0.0


def test_infinite_loop_is_killed_by_the_cpu_limit(reward):
    start = time.monotonic()
    assert score(reward, "while True:\n    pass\n" + ADD) == 0.0
    assert time.monotonic() - start < 4


def test_sleeping_forever_is_killed_by_the_wall_clock(reward):
    start = time.monotonic()
    assert score(reward, "import time\ntime.sleep(60)\n" + ADD) == 0.0
    assert time.monotonic() - start < 4


def test_memory_bomb_fails(reward):
    assert score(reward, "x = bytearray(2 * 1024 ** 3)\n" + ADD) == 0.0
    assert score(reward, "x = []\nwhile True:\n    x.append(' ' * 10 ** 6)\n" + ADD) == 0.0


def test_large_file_fails_and_nothing_is_left(reward, sandbox_root):
    code = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 50 * 1024 ** 2)\n" + ADD
    assert score(reward, code) == 0.0
    assert list(sandbox_root.iterdir()) == []
    small = "with open('small.txt', 'w') as f:\n    f.write('ok')\n" + ADD
    assert score(reward, small) == 1.0  # writing inside its own folder is fine


def test_no_writes_outside_its_folder(reward, tmp_path):
    target = tmp_path / f"pwned_{uuid.uuid4().hex}"
    for code in (f"import os\nos.system('touch {target}')\n",
                 f"import subprocess\nsubprocess.run(['touch', '{target}'])\n",
                 f"open('{target}', 'w').write('x')\n",
                 f"import os\nos.symlink('{target}', 'link')\nopen('link', 'w').write('x')\n",
                 f"import os\nos.mkdir('{target}')\n"):
        assert score(reward, code + ADD) == 0.0, code
        assert not target.exists(), code
    existing = tmp_path / "keep.txt"
    existing.write_text("data")
    assert score(reward, f"import os\nos.remove('{existing}')\n" + ADD) == 0.0
    assert existing.read_text() == "data"


def test_fork_loop_is_stopped(reward):
    start = time.monotonic()
    assert score(reward, "import os\nwhile True:\n    os.fork()\n") == 0.0
    assert score(reward, "import multiprocessing\nmultiprocessing.Process(target=print).start()\n"
                 ) == 0.0
    assert time.monotonic() - start < 4


def test_no_network(reward):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n",
                     f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))\n",
                     "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:1')\n"):
            assert score(reward, code + ADD) == 0.0, code
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_parent_environment_and_files_are_not_visible(reward, monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORL_TEST_SECRET", "hunter2")
    assert score(reward, "import os\nassert 'EXPLORL_TEST_SECRET' not in os.environ\n" + ADD) == 1
    assert score(reward, "import os\nassert os.environ['EXPLORL_TEST_SECRET']\n" + ADD) == 0.0
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    assert score(reward, f"open('{secret}').read()\n" + ADD) == 0.0
    assert score(reward, f"import os\nos.listdir('{tmp_path}')\nopen('{tmp_path}')\n" + ADD) == 0.0
    assert score(reward, "import os\nopen(f'/proc/{os.getppid()}/environ').read()\n" + ADD) == 0.0
    assert score(reward, "import json\nopen(json.__file__).read()\n" + ADD) == 1.0  # stdlib: ok


def test_limits_cannot_be_raised(reward):
    code = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n"
    assert score(reward, code + ADD) == 0.0


def test_ordinary_library_code_works(reward):
    code = """
import collections, dataclasses, enum, functools, itertools, json, math, re, tempfile, threading
from typing import NamedTuple

Point = collections.namedtuple("Point", "x y")

class Pair(NamedTuple):
    a: int
    b: int

@dataclasses.dataclass
class Box:
    value: int

class Colour(enum.Enum):
    RED = 1

@functools.lru_cache
def add(a, b):
    return Box(a).value + Point(0, b).y

with tempfile.TemporaryDirectory() as d:
    with open(d + "/x.json", "w") as f:
        json.dump({"k": [1, 2]}, f)
done = []
t = threading.Thread(target=lambda: done.append(re.sub("a", "b", "aa")))
t.start()
t.join()
assert done == ["bb"] and math.isclose(Pair(1, 2).b, 2)
"""
    assert score(reward, code) == 1.0


def test_batch_runs_in_parallel_and_stays_aligned(sandbox_root):
    reward = make_code_reward(cpu_seconds=2, wall_seconds=3, workers=4,
                              tmp_root=str(sandbox_root))
    sleepy = "import time\ntime.sleep(0.5)\n"
    completions = [sleepy + ADD if i % 2 else sleepy + "def add(a, b): return 0\n"
                   for i in range(8)]
    start = time.monotonic()
    assert reward([""] * 8, completions, tests=[TESTS] * 8) == [0.0, 1.0] * 4
    assert time.monotonic() - start < 3.5  # 8 x 0.5 s sequentially would be >= 4 s
    assert not os.listdir(sandbox_root)


def test_thread_bomb_is_bounded(reward):
    start = time.monotonic()
    code = "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, " \
           "args=(60,), daemon=True).start()\n"
    assert score(reward, code) == 0.0
    assert time.monotonic() - start < 4

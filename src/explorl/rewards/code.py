"""A reward for code: run the completion's Python with the row's tests, 1.0 if they pass.

``code_reward(prompts, completions, tests=None, **columns)`` has TRL's signature; ``tests`` is a
data column of assert statements (a string or a list of strings per row). Rows without tests get
``None`` (the reward does not apply). ``make_code_reward(...)`` sets the limits.

Each completion runs in a fresh Python process (``-I -S -B``: no environment variables, user
site or current folder on the path; no site-packages; no bytecode written) with an environment
holding only ``HOME`` and ``TMPDIR``, in a new temporary folder that is deleted afterwards,
with limits on CPU time, address space, file size, open files and processes, and a wall-clock
timeout that kills its whole process group. Inside, an audit hook (``sandbox_runner.py``) stops
process creation, sockets, ctypes, writes outside the folder and reads outside it and the
standard library. The tests pass only if the runner reaches their end: exiting early with
status 0 scores 0.

This is best effort, not a security boundary like a container: audit hooks and resource limits
keep honest mistakes and simple reward hacks in check (an infinite loop, a memory bomb,
``sys.exit(0)``, a fork loop, a stray ``os.system``), but Python code can tamper with the
standard-library helpers the hook relies on, and native code or an interpreter bug can escape
it. Train on untrusted code inside a container or VM.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

RUNNER = Path(__file__).with_name("sandbox_runner.py")
# a fence left open (the completion hit its length limit) runs to the end of the text
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion) -> str:
    """The first ```python (or ```py) block, else the first fenced block, else the text."""
    if isinstance(completion, list):  # conversational: the last message's content
        completion = completion[-1]["content"] if completion else ""
    blocks = _FENCE.findall(completion)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else completion


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    wall_seconds: float = 10.0
    memory_mb: int = 512
    file_mb: int = 1
    open_files: int = 64
    tmp_root: str | None = None
    """Where the per-run temporary folders are made (default: the system's)."""


def run_with_tests(code: str, tests: str, limits: SandboxLimits | None = None) -> bool:
    """Run ``code`` then ``tests`` in the sandbox; True when the tests ran to their end."""
    limits = limits or SandboxLimits()
    token = secrets.token_hex(16).encode()
    workdir = tempfile.mkdtemp(prefix="explorl-code-", dir=limits.tmp_root)
    try:
        Path(workdir, "solution.py").write_text(code, encoding="utf-8")
        Path(workdir, "tests.py").write_text(tests, encoding="utf-8")
        # stdout goes to a file: RLIMIT_FSIZE caps it, where a pipe would fill our memory
        with tempfile.TemporaryFile(dir=limits.tmp_root) as out:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", str(RUNNER), workdir,
                 str(limits.cpu_seconds), str(limits.memory_mb), str(limits.file_mb),
                 str(limits.open_files)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL, cwd=workdir,
                env={"HOME": workdir, "TMPDIR": workdir}, start_new_session=True)
            try:
                proc.communicate(token, timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                pass
            finally:
                _kill_group(proc)
            out.seek(0, os.SEEK_END)
            out.seek(max(0, out.tell() - 256))
            tail = out.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return proc.returncode == 0 and tail == token
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it started, in its session
    proc.wait()


def _tests_text(tests) -> str | None:
    if tests is None:
        return None
    if isinstance(tests, (list, tuple)):
        tests = "\n".join(str(t) for t in tests)
    return tests if str(tests).strip() else None


def make_code_reward(cpu_seconds: int = 5, wall_seconds: float = 10.0, memory_mb: int = 512,
                     file_mb: int = 1, open_files: int = 64, workers: int | None = None,
                     tmp_root: str | None = None):
    """A ``code_reward`` with these limits, running up to ``workers`` completions at once."""
    limits = SandboxLimits(cpu_seconds, wall_seconds, memory_mb, file_mb, open_files, tmp_root)
    workers = workers or min(4, os.cpu_count() or 1)

    def code_reward(prompts, completions, tests=None, **columns) -> list[float | None]:
        per_row = tests if tests is not None else [None] * len(completions)

        def score(i: int) -> float | None:
            text = _tests_text(per_row[i])
            if text is None:
                return None
            return 1.0 if run_with_tests(extract_code(completions[i]), text, limits) else 0.0

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(score, range(len(completions))))

    return code_reward


code_reward = make_code_reward()

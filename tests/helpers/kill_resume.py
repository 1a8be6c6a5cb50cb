"""Run ``explorl train`` in a subprocess, SIGKILL it part-way, resume it, and compare the result
with an uninterrupted run. Shared by tests/test_kill_resume.py and benchmarks/kill_resume.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from explorl.checkpoint import list_checkpoints

SMALL = ["max_steps=30", "save_every=1", "prompts_per_step=4", "num_generations=4",
         "eval_size=20", "task_train_size=200", "progress=false", "plots=false"]


def command(out: Path, settings: list[str] = SMALL) -> list[str]:
    return [sys.executable, "-m", "explorl.cli", "train", f"output_dir={out}", *settings]


def _env() -> dict[str, str]:
    # one thread: bit-identical results across processes, and a fair share of a shared machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_to_end(out: Path, settings: list[str] = SMALL, timeout: float = 300) -> None:
    r = subprocess.run(command(out, settings), env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"explorl train exited {r.returncode}: {r.stderr[-2000:]}")


@dataclass
class Kill:
    seconds_after_start: float  # wall time from launch to SIGKILL
    killed: bool  # False: the run had already finished
    mid_checkpoint: bool  # a temporary checkpoint folder existed when it died
    resumed_from: int  # step of the newest complete checkpoint left behind (0: none)
    exit_code: int  # of the signalled run (-9 for SIGKILL; 143 or 130 when it stopped itself)


def start_and_kill(out: Path, delay: float, after: str | None = "checkpoint-1",
                   settings: list[str] = SMALL, timeout: float = 300,
                   sig: int = signal.SIGKILL) -> Kill:
    """Launch, wait until ``out/after`` exists (None: from launch), sleep ``delay``, send
    ``sig`` (SIGKILL by default) to the run's process group."""
    t0 = time.monotonic()
    proc = subprocess.Popen(command(out, settings), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        while after and not (out / after).exists() and proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{out / after} did not appear in {timeout} s")
            time.sleep(0.005)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, sig)
        at = time.monotonic() - t0
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"explorl train exited {proc.returncode}: {err.decode()[-2000:]}")
    mid = any(p.name.startswith(".tmp-checkpoint") for p in out.iterdir()) if out.exists() \
        else False
    done = list_checkpoints(out)
    step = int(done[-1].name.split("-")[1]) if done else 0
    return Kill(round(at, 3), killed, mid, step, proc.returncode)


def metric_rows(run: Path) -> list[dict]:
    rows = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in rows]


def differences(a: Path, b: Path) -> list[str]:
    """Why run ``b`` is not the same as run ``a`` (empty: identical weights, metrics, summary)."""
    found = []
    wa, wb = (load_file(str(r / "final" / "model.safetensors")) for r in (a, b))
    if wa.keys() != wb.keys():
        found.append(f"weight names differ: {sorted(wa.keys() ^ wb.keys())}")
    found += [f"weights differ: {k}" for k in sorted(wa.keys() & wb.keys())
              if not torch.equal(wa[k], wb[k])]
    ma, mb = metric_rows(a), metric_rows(b)
    if [r.get("step") for r in ma] != [r.get("step") for r in mb]:
        found.append(f"metrics steps differ: {[r.get('step') for r in mb]}")
    else:
        found += [f"metrics differ at step {x['step']}" for x, y in zip(ma, mb) if x != y]
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    for key in ("before", "after", "steps", "tokens_generated"):
        if sa.get(key) != sb.get(key):
            found.append(f"summary {key} differs")
    leftovers = [p.name for p in b.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    if leftovers:
        found.append(f"temporary files left behind: {leftovers}")
    return found

"""The run loop that online training, offline training and reward-model training share.

:class:`RunLoop` owns everything around the steps: one run per output folder (the lock),
resuming from the latest checkpoint, the held-out evaluation before, every ``eval_every`` steps
and after, the metrics log and trackers, the progress bar, checkpoints every ``save_every``
steps written atomically (a failing write keeps the previous one and stops the run), SIGTERM
and SIGINT (a checkpoint of the last completed step, then a stop), and the final write of
``final/``, ``summary.json`` and the plots. A job subclasses it and says what one step is, how
it evaluates and what it saves besides weights, optimizer and random states.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from explorl.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, save_final
from explorl.distributed import Parallel
from explorl.errors import Interrupted, TrainingStopped, UserError
from explorl.interrupts import Interrupts, StepAbandoned
from explorl.models import lora
from explorl.output_lock import OutputLock
from explorl.tracking import MetricsLog, Progress, Trackers, plot_run, truncate_metrics


@dataclass
class RunSettings:
    """What the loop reads of a job's configuration."""

    output_dir: str
    max_steps: int
    eval_every: int = 0
    save_every: int = 0
    save_total_limit: int = 2
    resume: str = "auto"
    progress: bool = True
    plots: bool = True
    report_to: tuple = ()
    desc: str = "train"


def linear_warmup(learning_rate: float, warmup_steps: int, step: int) -> float:
    """The learning rate at ``step``: linear warmup over ``warmup_steps``, then constant."""
    return learning_rate * (min(1.0, step / warmup_steps) if warmup_steps else 1.0)


class RunLoop:
    """Drives a job to ``settings.max_steps``. A subclass sets ``settings``, ``out``, ``dist``,
    ``model``, ``tokenizer``, ``optimizer`` and ``interrupts`` and implements :meth:`step`,
    :meth:`evaluate`, :meth:`summary`; the rest has defaults."""

    settings: RunSettings
    out: Path
    dist: Parallel
    interrupts: Interrupts
    step_done: int = 0
    saved_step: int | None = None
    before: dict | None = None
    logs: tuple[str, ...] = ()
    """Files besides ``metrics.jsonl`` whose records past the resumed step are dropped."""
    can_abandon: bool = False
    """Whether a signal may abandon the step in flight (one process; the job can restore what
    a step changes before its update, :meth:`boundary`)."""

    # --- what a job says ---------------------------------------------------------------------
    def step(self, step: int) -> dict:
        """One training step; returns its metrics."""
        raise NotImplementedError

    def evaluate(self, stage: str) -> dict | None:
        """Held-out results at ``stage`` (``before``, ``during`` or ``after`` training), or None
        without a held-out set (and on every process but the first)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """What ``summary.json`` says besides before/after, steps and time."""
        return {}

    def state(self) -> dict:
        """JSON a checkpoint holds besides weights, optimizer and random states."""
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint holds besides weights and optimizer state."""
        return {}

    def load(self, state: dict) -> None:
        """Restore :meth:`state` (and ``state["tensors"]``) from a checkpoint."""

    def save_config(self, out: Path) -> None:
        """Write the resolved configuration into the output folder."""

    def done(self) -> bool:
        """Whether the run has spent its budget before ``max_steps``."""
        return False

    def final_extra(self, folder: Path) -> None:
        """Write what ``final/`` holds beside the model (an algorithm's heads)."""

    def tracker_config(self) -> dict | None:
        return None

    def boundary(self) -> dict:
        """What a step changes before its update, to put back when a signal abandons it: the
        global random generators (every CUDA device's too), and the parts a subclass names in
        :meth:`boundary_parts`."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return {"rng": (random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda),
                "parts": {k: copy.deepcopy(p.state()) for k, p in self.boundary_parts().items()}}

    def boundary_parts(self) -> dict:
        return {}

    def restore(self, boundary: dict) -> None:
        python, numpy, torch_state, cuda = boundary["rng"]
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(torch_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for name, part in self.boundary_parts().items():
            part.load(boundary["parts"][name])

    # --- the loop ----------------------------------------------------------------------------
    def train(self) -> dict:
        """Run to ``max_steps`` (resuming if a checkpoint exists); return the summary. One run
        per output folder (:mod:`explorl.output_lock`); SIGTERM and SIGINT stop it with a
        checkpoint (:mod:`explorl.interrupts`)."""
        lock = OutputLock(self.out)
        error = None
        if self.dist.is_main:  # the first process writes, so it holds the lock
            try:
                lock.acquire()
            except UserError as e:
                error = str(e)
        error = self.dist.broadcast(error)
        if error:
            raise UserError(error)
        try:
            with self.interrupts.installed(can_abandon=self.can_abandon
                                           and self.dist.world == 1):
                return self._run()
        finally:
            lock.release()

    def _run(self) -> dict:
        s, main = self.settings, self.dist.is_main
        log = self._prepare_output()  # None on all but the first process
        trackers = Trackers(s.report_to if main else [], self.out,
                            config=self.tracker_config(), resume=self.step_done > 0)
        if self.before is None:
            self.before = self.evaluate("before")
        progress = Progress(s.max_steps, initial=self.step_done, enabled=s.progress and main,
                            desc=s.desc)
        start = time.perf_counter()
        after, evaluated_last = None, False
        try:
            for step in range(self.step_done + 1, s.max_steps + 1):
                if self.done():
                    break
                self._stop_if_interrupted()
                metrics = self._guarded_step(step)
                last = step == s.max_steps or self.done()
                if last or s.eval_every and step % s.eval_every == 0:
                    result = self.evaluate("after" if last else "during")
                    after, evaluated_last = (result if last else None), last
                    metrics.update(eval_metrics(result))
                if main:
                    log.write(metrics)
                    trackers.log(metrics, step)
                progress.update(metrics)
                self.step_done = step
                if s.save_every and step % s.save_every == 0 or last:
                    self._checkpoint(step)
            self._stop_if_interrupted()
        finally:
            progress.close()
            if log:
                log.close()
            trackers.close()
        if not evaluated_last:  # resumed at max_steps: the final evaluation was not logged
            after = self.evaluate("after")
        return self._finish(after, time.perf_counter() - start)

    def _guarded_step(self, step: int) -> dict:
        """:meth:`step`, abandoned (and put back) if a signal comes before its update changes
        the weights; a run that must stop saves the last completed step first."""
        boundary = self.boundary() if self.can_abandon else None
        try:
            with self.interrupts.abandonable():
                return self.step(step)
        except StepAbandoned as e:
            self.restore(boundary)
            self._interrupted(e.args[0])
        except TrainingStopped:
            self._checkpoint(self.step_done)  # the last completed step, to resume from
            raise

    def _stop_if_interrupted(self) -> None:
        """Between steps: stop if a signal came (under several processes, to any of them)."""
        signum = self.interrupts.received or 0
        if self.dist.world > 1:
            signum = self.dist.max(signum)
        if signum:
            self._interrupted(signum)

    def _interrupted(self, signum: int) -> NoReturn:
        if self.saved_step != self.step_done:
            self._checkpoint(self.step_done)
        path = self.out / f"checkpoint-{self.step_done}"
        raise Interrupted(signum, f"{Interrupts.name(signum)}: saved step {self.step_done} in "
                                  f"{path}; run the same command to resume",
                          quiet=not self.dist.is_main)

    # --- files -------------------------------------------------------------------------------
    def _prepare_output(self) -> MetricsLog | None:
        """Resume (every process); the files and the metrics log belong to the first."""
        out, main = self.out, self.dist.is_main
        out.mkdir(parents=True, exist_ok=True)
        checkpoints = list_checkpoints(out)
        if self.settings.resume == "never":
            for p in checkpoints if main else []:
                shutil.rmtree(p)
            checkpoints = []
        if checkpoints:
            state = load_checkpoint(checkpoints[-1], self.model, self.optimizer, self.dist)
            self.step_done, self.before = state["step"], state["before"]
            self.saved_step = self.step_done
            self.load(state)
            for name in ("metrics.jsonl", *self.logs) if main else ():
                truncate_metrics(out / name, self.step_done)
        if not main:
            return None
        self.save_config(out)
        return MetricsLog(out / "metrics.jsonl", append=bool(checkpoints))

    def _checkpoint(self, step: int) -> None:
        self.saved_step = step
        state = {"before": self.before, **self.state()}
        weights = self.dist.model_state()  # gathered from every process under FSDP
        optimizer_sd = self.dist.optimizer_state(self.optimizer)
        error = None
        if self.dist.is_main:
            try:
                save_checkpoint(self.out, step, self.model, self.tokenizer, optimizer_sd, state,
                                self.settings.save_total_limit, model_state=weights,
                                extra_tensors=self.tensors())
            except OSError as e:  # a full disk, a failing write: the last checkpoint stays
                error = self._write_failed(f"checkpoint-{step}", e)
        error = self.dist.broadcast(error)  # nobody runs ahead of a checkpoint being written
        if error:
            raise TrainingStopped(error)

    def _write_failed(self, what: str, error: OSError) -> str:
        checkpoints = list_checkpoints(self.out)
        kept = f"{checkpoints[-1]} is intact" if checkpoints else "no checkpoint was written"
        return (f"could not write {self.out / what} ({error.strerror or error}); {kept}; free "
                "space (or fix the folder) and run the same command to resume")

    def _finish(self, after: dict | None, seconds: float) -> dict:
        weights = self.dist.model_state()  # gathered from every process under FSDP
        if not self.dist.is_main:
            return self.dist.broadcast(None)  # the first process's summary, once it is written
        summary = {"before": self.before, "after": after, "steps": self.step_done,
                   **self.summary(), "train_seconds": round(seconds, 1)}
        try:
            self._write_final(weights, summary)
        except OSError as e:
            summary = {"error": self._write_failed("final", e)}
        summary = self.dist.broadcast(summary)
        if "error" in summary:
            raise TrainingStopped(summary["error"])
        return summary

    def _write_final(self, weights: dict | None, summary: dict) -> None:
        """``final/`` (the model, merged if LoRA; ``adapter/``), ``summary.json``, plots."""
        if lora.is_lora(self.model):  # adapters alone, then the merged model in final/
            lora.save_adapter(self.model, self.out / "adapter")
            self.model = lora.merge_lora(self.model)
        save_final(self.out, self.model, self.tokenizer, summary, model_state=weights,
                   extra=self.final_extra)
        if self.settings.plots:
            plot_run(self.out)


def eval_metrics(result: dict | None) -> dict:
    """A held-out result as metrics of the step it follows."""
    metrics = {"eval/accuracy": (result or {}).get("accuracy")}
    if result and "dense" in result:
        metrics["eval/dense"] = result["dense"]
    return metrics

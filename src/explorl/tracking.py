"""Run tracking: the ``metrics.jsonl`` log, the ``completions.jsonl`` table, TensorBoard and
W&B trackers, per-run plots, a progress bar and terminal tables."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorl.errors import UserError

SIGNIFICANT_DIGITS = 6
SMOOTH_FRACTION = 0.05
FIGSIZE = (6.0, 4.0)
DPI = 100


def _clean(value: Any) -> Any:
    """Make ``value`` JSON-safe: floats rounded, NaN/inf to ``None``, scalars unwrapped."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars/arrays, torch tensors
        return _clean(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        return _clean(float(value))
    except (TypeError, ValueError):
        return str(value)


class MetricsLog:
    """Append-only JSON-lines log with one record per training step."""

    def __init__(self, path: Path, *, append: bool):
        """Open ``path`` for writing; ``append=False`` truncates an existing file."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict) -> None:
        """Write ``record`` as one line and flush (6 significant digits, NaN/inf as ``null``)."""
        line = json.dumps(_clean(record), allow_nan=False, separators=(", ", ": "))
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file; blank and unparseable (e.g. half-written) lines are
    skipped, and a missing file gives ``[]``."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
    return records


def truncate_metrics(path: Path, max_step: int) -> None:
    """Drop records with ``step > max_step`` (and unparseable lines), replacing the file
    atomically. Records without a ``step`` are kept. A missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            step = obj.get("step") if isinstance(obj, dict) else None
            if isinstance(step, (int, float)) and step > max_step:
                continue
            kept.append(text + "\n")
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- completions table and external trackers (TensorBoard, Weights & Biases) -----------------

TRACKERS = ("tensorboard", "wandb")


def log_completions(path: Path, step: int, prompts: Sequence, completions: Sequence,
                    rewards: Sequence, advantages: Sequence,
                    revisions: Sequence | None = None) -> None:
    """Append one ``{step, prompt, completion, reward, advantage}`` line per sample to ``path``
    (``completions.jsonl``); the lists are aligned sample by sample. Conversational prompts and
    completions are kept as message lists; NaN rewards (masked samples) become ``null``. With
    ``revisions`` (HeRL) each line also says whether its completion is a revision
    (``revision``: true or false) and, for a revision, the hindsight prompt it was written under
    (``hindsight``; the item itself when it is a string). On resume,
    ``truncate_metrics(path, step)`` drops the lines of steps being redone."""
    lengths = {len(prompts), len(completions), len(rewards), len(advantages)}
    if revisions is not None:
        lengths.add(len(revisions))
    if len(lengths) != 1:
        raise ValueError(f"log_completions: lists of different lengths {sorted(lengths)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for i, (prompt, completion, reward, advantage) in enumerate(zip(
                prompts, completions, rewards, advantages)):
            record = {"step": step, "prompt": prompt, "completion": completion,
                      "reward": reward, "advantage": advantage}
            if revisions is not None:
                record["revision"] = bool(revisions[i])
                if isinstance(revisions[i], str):
                    record["hindsight"] = revisions[i]
            fh.write(json.dumps(_clean(record), allow_nan=False, ensure_ascii=False) + "\n")


class Trackers:
    """Sends each step's numeric metrics to the backends named in ``report_to``:

    * ``tensorboard``: event files in ``run_dir/tensorboard`` (needs the ``tensorboard``
      package);
    * ``wandb``: a Weights & Biases run (project ``$WANDB_PROJECT``, default ``explorl``; name:
      the run folder's name), files under ``run_dir``. ``WANDB_MODE=offline`` and the other
      ``WANDB_*`` variables are read by wandb itself. A resumed run (``resume=True``) continues
      the W&B run whose id is kept in ``run_dir/wandb_run_id``.

    ``metrics.jsonl`` is written regardless (:class:`MetricsLog`). An empty list tracks nothing.
    """

    def __init__(self, report_to: Sequence[str], run_dir: Path, config: dict | None = None,
                 resume: bool = False):
        unknown = [name for name in report_to if name not in TRACKERS]
        if unknown:
            raise UserError(f"report_to: unknown tracker {unknown[0]!r} "
                            f"(known: {', '.join(TRACKERS)})")
        self.run_dir = Path(run_dir)
        self._tensorboard = self._open_tensorboard() if "tensorboard" in report_to else None
        self._wandb = self._open_wandb(config, resume) if "wandb" in report_to else None

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("report_to: tensorboard needs the tensorboard package (pip install "
                            "tensorboard, or EXTRAS=tensorboard bash scripts/setup.sh)") from None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _open_wandb(self, config: dict | None, resume: bool):
        try:
            import wandb
        except ImportError:
            raise UserError("report_to: wandb is not installed (pip install wandb)") from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "explorl"),
                         name=self.run_dir.name, dir=str(self.run_dir), config=_clean(config),
                         id=run_id, resume="allow" if run_id else None)
        id_file.write_text(str(run.id))
        return run

    def log(self, metrics: dict, step: int) -> None:
        """Send the finite numbers of ``metrics`` (other values are skipped) at ``step``."""
        scalars = {k: float(v) for k, v in metrics.items() if k != "step" and _is_number(v)}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, global_step=step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close every backend; safe to call twice."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- plotting ---------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def smoothing_window(n: int, fraction: float = SMOOTH_FRACTION) -> int:
    """Moving-average window for ``n`` points: about ``fraction`` of them, at least 1."""
    return max(1, int(round(fraction * n)))


def moving_average(y: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of width ``window`` (rounded up to odd) that shrinks at the ends,
    so the output has the same length as ``y``."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if window <= 1 or n < 3:
        return y.copy()
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(y)])
    idx = np.arange(n)
    lo = np.clip(idx - half, 0, n)
    hi = np.clip(idx + half + 1, 0, n)
    return (csum[hi] - csum[lo]) / (hi - lo)


def series(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(step, value)`` arrays for the records where ``key`` holds a finite number. A record
    without ``step`` takes its 1-based position."""
    xs, ys = [], []
    for i, rec in enumerate(records):
        v = rec.get(key)
        if not _is_number(v):
            continue
        step = rec.get("step")
        xs.append(step if _is_number(step) else i + 1)
        ys.append(v)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def new_figure(title: str, xlabel: str, ylabel: str):
    """A 6x4 in, 100 dpi figure rendered with the Agg canvas (pyplot is not used), and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (tight layout) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _draw_smoothed(ax, x: np.ndarray, y: np.ndarray, *, label: str, color: str = "C0") -> None:
    """Raw curve (faint) with its moving average on top; a short curve is drawn raw only."""
    window = smoothing_window(len(y))
    if window <= 1:
        ax.plot(x, y, color=color, linewidth=1.5, label=label)
        return
    ax.plot(x, y, color=color, linewidth=0.8, alpha=0.3)
    ax.plot(x, moving_average(y, window), color=color, linewidth=1.8, label=label)


def _before_accuracy(run_dir: Path) -> float | None:
    try:
        before = json.loads((run_dir / "summary.json").read_text())["before"]["accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(before) if _is_number(before) else None


def plot_run(run_dir: Path) -> list[Path]:
    """Plot a run's ``metrics.jsonl`` into ``run_dir/plots`` and return the PNGs written.

    Writes ``reward.png`` (mean with a ±std band), ``accuracy.png`` (train, plus
    ``eval/accuracy`` points), ``entropy.png``, ``kl.png``, ``completion_length.png``, for
    offline runs ``offline_losses.png`` and ``ilql_advantage.png`` and, only if temperature
    varies, ``temperature.png``. A plot whose metric never appears is skipped.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    if not records:
        return []
    written = [_plot_reward(records, out), _plot_accuracy(records, run_dir, out)]
    for key, fname, title, ylabel in (
        ("entropy", "entropy.png", "Policy entropy", "entropy (nats/token)"),
        ("kl", "kl.png", "KL to reference", "KL"),
        ("completion_length/mean", "completion_length.png", "Completion length", "tokens"),
    ):
        x, y = series(records, key)
        if not len(y):
            continue
        fig, ax = new_figure(title, "step", ylabel)
        _draw_smoothed(ax, x, y, label=key)
        written.append(save_figure(fig, out / fname))
    written += _plot_offline(records, out)
    x, y = series(records, "temperature")
    if len(y) and np.ptp(y) > 0:
        fig, ax = new_figure("Sampling temperature", "step", "temperature")
        ax.plot(x, y, color="C0", linewidth=1.5)
        written.append(save_figure(fig, out / "temperature.png"))
    return [w for w in written if w is not None]


def _plot_reward(records: list[dict], out: Path) -> Path | None:
    """The reward's mean with a ±std band."""
    x, y = series(records, "reward/mean")
    if not len(y):
        return None
    fig, ax = new_figure("Reward", "step", "reward")
    band = [
        (r["step"] if _is_number(r.get("step")) else i + 1, r["reward/mean"], r["reward/std"])
        for i, r in enumerate(records)
        if _is_number(r.get("reward/mean")) and _is_number(r.get("reward/std"))
    ]
    if band:
        bx, bm, bs = (np.asarray(c, dtype=float) for c in zip(*band))
        ax.fill_between(bx, bm - bs, bm + bs, color="C0", alpha=0.15, linewidth=0, label="±std")
    _draw_smoothed(ax, x, y, label="reward/mean")
    ax.legend(loc="best", fontsize="small")
    return save_figure(fig, out / "reward.png")


def _plot_accuracy(records: list[dict], run_dir: Path, out: Path) -> Path | None:
    """Train accuracy, plus held-out eval points (the evaluation before training at step 0)."""
    x, y = series(records, "accuracy")
    ex, ey = series(records, "eval/accuracy")
    before = _before_accuracy(run_dir)
    if before is not None:
        ex, ey = np.concatenate([[0.0], ex]), np.concatenate([[before], ey])
    if not (len(y) or len(ey)):
        return None
    fig, ax = new_figure("Accuracy", "step", "accuracy")
    if len(y):
        _draw_smoothed(ax, x, y, label="train")
    if len(ey):
        ax.plot(ex, ey, color="C3", marker="o", markersize=4, linewidth=1.0,
                label="eval (greedy)")
    ax.legend(loc="best", fontsize="small")
    return save_figure(fig, out / "accuracy.png")


def _plot_offline(records: list[dict], out: Path) -> list[Path]:
    """Offline methods: ILQL's losses and its advantages on successful and failed samples."""
    written = []
    for keys, fname, title, ylabel, log in (
        (("ilql/loss_q", "ilql/loss_v", "ilql/loss_cql", "ilql/loss_awac", "bc/nll"),
         "offline_losses.png", "Offline losses", "loss (log scale)", True),
        (("ilql/advantage_success", "ilql/advantage_failure"), "ilql_advantage.png",
         "ILQL: Q - V of the data's tokens", "Q - V", False),
    ):
        drawn = [(key, *series(records, key)) for key in keys]
        drawn = [d for d in drawn if len(d[2])]
        if not drawn:
            continue
        fig, ax = new_figure(title, "step", ylabel)
        for i, (key, x, y) in enumerate(drawn):
            _draw_smoothed(ax, x, y, label=key, color=f"C{i}")
        if log:  # the terms differ by orders of magnitude
            ax.set_yscale("log")
        ax.legend(loc="best", fontsize="small")
        written.append(save_figure(fig, out / fname))
    return written


# --- terminal output --------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if not _is_number(v):
        return "-"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"


class Progress:
    """tqdm bar over training steps showing reward, accuracy and entropy of the last step."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        """``initial`` is the step a resumed run starts from; ``enabled=False`` shows nothing."""
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
        )
        self._n = initial

    def update(self, step_metrics: dict) -> None:
        """Advance one step and show ``reward=.. acc=.. ent=..`` from ``step_metrics``."""
        self._bar.set_postfix_str(
            f"reward={_fmt(step_metrics.get('reward/mean'))} "
            f"acc={_fmt(step_metrics.get('accuracy'))} "
            f"ent={_fmt(step_metrics.get('entropy'))}",
            refresh=False,
        )
        self._bar.update(1)
        self._n += 1

    @property
    def n(self) -> int:
        """Steps counted so far, including ``initial``."""
        return self._n

    def close(self) -> None:
        """Close the bar."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _numeric_text(s: str) -> bool:
    t = s.strip().rstrip("%").replace(",", "").replace("±", "")
    try:
        float(t)
    except ValueError:
        return False
    return True


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Plain-text table: header, a dashed rule, then rows; numeric columns right-aligned.

    Short rows are padded with empty cells; a row longer than the header is an error.
    """
    ncol = len(header)
    cells = []
    for row in rows:
        if len(row) > ncol:
            raise ValueError(f"row has {len(row)} cells, header has {ncol}: {row!r}")
        cells.append([str(c) for c in row] + [""] * (ncol - len(row)))
    head = [str(h) for h in header]
    widths = [max([len(head[j])] + [len(r[j]) for r in cells]) for j in range(ncol)]
    right = [
        bool(cells)
        and all(not r[j] or _numeric_text(r[j]) for r in cells)
        and any(r[j] for r in cells)
        for j in range(ncol)
    ]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)

"""Compare configurations across seeds: a results table and metric-vs-generated-tokens plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from explorl.errors import UserError
from explorl.tracking import (
    moving_average,
    new_figure,
    read_metrics,
    save_figure,
    smoothing_window,
)

DEFAULT_METRICS = ("accuracy", "reward/mean", "entropy", "completion_length/mean")
GRID_POINTS = 200


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def stats(values: list[float | None]) -> dict:
    """``mean``, sample ``std`` (ddof=1; 0 for one value), ``min``, ``max`` and ``n`` of the
    non-missing values; all ``None`` (and ``n=0``) when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def _load_summary(run: Path) -> dict:
    path = run / "summary.json"
    if not path.is_file():
        raise UserError(f"no summary.json in {run} (did the run finish?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def _token_axis(records: list[dict]) -> list[float | None]:
    """Cumulative generated tokens per record: ``tokens/total`` where logged, otherwise the
    previous total plus ``tokens/generated``; ``None`` where neither is known."""
    xs: list[float | None] = []
    total: float | None = None
    for rec in records:
        t = _num(rec.get("tokens/total"))
        g = _num(rec.get("tokens/generated"))
        if t is not None:
            total = t
        elif g is not None:
            total = (total or 0.0) + g
        else:
            xs.append(None)
            continue
        xs.append(total)
    return xs


def _curve(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(generated tokens, value)`` for records holding both, sorted by tokens."""
    xs = _token_axis(records)
    pts = [(x, _num(r.get(key))) for x, r in zip(xs, records)]
    pts = [(x, y) for x, y in pts if x is not None and y is not None]
    if not pts:
        return np.empty(0), np.empty(0)
    pts.sort(key=lambda p: p[0])
    x, y = (np.asarray(c, dtype=float) for c in zip(*pts))
    return x, y


def _seed_entry(run: Path, summary: dict) -> dict:
    before = summary.get("before") if isinstance(summary.get("before"), dict) else {}
    after = summary.get("after") if isinstance(summary.get("after"), dict) else {}
    entry: dict[str, Any] = {
        "run": str(run),
        "before": _num(before.get("accuracy")),
        "after": _num(after.get("accuracy")),
        "tokens": _num(summary.get("tokens_generated")),
    }
    pak = after.get("pass_at_k")
    if isinstance(pak, dict) and pak:
        entry["pass_at_k"] = {str(k): _num(v) for k, v in pak.items()}
    return entry


def _k_order(k: str) -> tuple[int, float, str]:
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _tokens(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _markdown(labels: dict[str, dict]) -> str:
    ks = sorted({k for info in labels.values() for k in info["pass_at_k"]}, key=_k_order)
    header = [
        "label",
        "seeds",
        "before acc",
        "after acc (mean ± std)",
        "min–max",
        "per-seed after acc",
    ]
    header += [f"pass@{k}" for k in ks]
    header.append("generated tokens (mean)")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for label, info in labels.items():
        a = info["after_accuracy"]
        mean_std = "–" if a["mean"] is None else f"{_pct(a['mean'])} ± {_pct(a['std'])}"
        span = "–" if a["min"] is None else f"{_pct(a['min'])}–{_pct(a['max'])}"
        per_seed = ", ".join(_pct(s["after"]) for s in info["seeds"])
        row = [
            label.replace("|", "\\|"),
            str(len(info["seeds"])),
            _pct(info["before_accuracy"]["mean"]),
            mean_std,
            span,
            per_seed,
        ]
        row += [_pct(info["pass_at_k"][k]["mean"]) if k in info["pass_at_k"] else "–" for k in ks]
        row.append(_tokens(info["tokens_generated"]["mean"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of curves interpolated on a shared token grid spanning their common range."""
    if len(curves) == 1:
        return curves[0]
    lo = max(float(x[0]) for x, _ in curves)
    hi = min(float(x[-1]) for x, _ in curves)
    if hi < lo:
        return np.empty(0), np.empty(0)
    grid = np.linspace(lo, hi, GRID_POINTS) if hi > lo else np.array([lo])
    return grid, np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)


def _plot_metric(
    runs: dict[str, list[list[dict]]], key: str, path: Path, *, smooth: bool, title: str
) -> Path | None:
    """One figure: per label a thin line per seed and a thick mean line; ``None`` if no data."""
    from matplotlib.ticker import EngFormatter

    per_label = {}
    for label, seed_records in runs.items():
        curves = []
        for records in seed_records:
            x, y = _curve(records, key)
            if not len(x):
                continue
            if smooth:
                y = moving_average(y, smoothing_window(len(y)))
            curves.append((x, y))
        if curves:
            per_label[label] = curves
    if not per_label:
        return None

    fig, ax = new_figure(title, "generated tokens", key)
    ax.xaxis.set_major_formatter(EngFormatter())
    marker = None if smooth else "o"
    for i, (label, curves) in enumerate(per_label.items()):
        color, style = f"C{i % 10}", "-" if i < 10 else "--"  # ten colours, then dashed
        if len(curves) > 1:
            for x, y in curves:
                ax.plot(x, y, color=color, linewidth=0.7, alpha=0.35, marker=marker, markersize=2)
        mx, my = _mean_curve(curves)
        if len(mx):
            ax.plot(
                mx,
                my,
                color=color,
                linestyle=style,
                linewidth=2.2,
                label=f"{label} (n={len(curves)})",
                marker=marker if len(curves) == 1 else None,
                markersize=3,
            )
    ax.legend(loc="best", fontsize="small")
    return save_figure(fig, path)


def aggregate(
    groups: dict[str, list[Path]],
    out_dir: Path,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
) -> dict:
    """Summarise several configurations, each run over several seeds, into ``out_dir``.

    ``groups`` maps a label to its run directories. Per label: held-out ``after.accuracy``,
    ``before.accuracy`` and each ``after.pass_at_k`` key across seeds (mean, sample std, min,
    max) and mean ``tokens_generated``. Writes ``table.json`` (the returned dict), ``table.md``,
    ``<metric>_vs_tokens.png`` per metric (``/`` as ``_``) and ``eval_accuracy_vs_tokens.png``
    when ``eval/accuracy`` was logged. Raises ``UserError`` for a run without ``summary.json``.
    """
    out_dir = Path(out_dir)
    if not groups:
        raise UserError("nothing to compare: no run directories given")
    labels: dict[str, dict] = {}
    runs: dict[str, list[list[dict]]] = {}
    for label, dirs in groups.items():
        if not dirs:
            raise UserError(f"label {label!r} has no run directories")
        seeds, seed_records = [], []
        for d in dirs:
            run = Path(d)
            summary = _load_summary(run)
            records = read_metrics(run / "metrics.jsonl")
            entry = _seed_entry(run, summary)
            if entry["tokens"] is None:
                known = [t for t in _token_axis(records) if t is not None]
                entry["tokens"] = known[-1] if known else None
            seeds.append(entry)
            seed_records.append(records)
        ks = sorted({k for s in seeds for k in s.get("pass_at_k", {})}, key=_k_order)
        labels[label] = {
            "seeds": seeds,
            "after_accuracy": stats([s["after"] for s in seeds]),
            "before_accuracy": stats([s["before"] for s in seeds]),
            "pass_at_k": {k: stats([s.get("pass_at_k", {}).get(k) for s in seeds]) for k in ks},
            "tokens_generated": stats([s["tokens"] for s in seeds]),
        }
        runs[label] = seed_records

    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    for key in metrics:
        path = out_dir / f"{key.replace('/', '_')}_vs_tokens.png"
        if _plot_metric(runs, key, path, smooth=True, title=f"{key} vs generated tokens"):
            plots.append(path.name)
    path = out_dir / "eval_accuracy_vs_tokens.png"
    if _plot_metric(
        runs, "eval/accuracy", path, smooth=False, title="Held-out accuracy vs generated tokens"
    ):
        plots.append(path.name)

    table = {"labels": labels, "plots": plots}
    (out_dir / "table.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    (out_dir / "table.md").write_text(_markdown(labels), encoding="utf-8")
    return table

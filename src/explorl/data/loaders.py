"""Load prompt data sets and normalise them to plain Python rows.

Accepted sources: a ``.jsonl`` / ``.json`` / ``.parquet`` file, a directory written by
``datasets.Dataset.save_to_disk`` (for a ``DatasetDict`` the ``train`` split is used), a
``datasets.Dataset`` object, or a list of dicts.

Accepted layouts:

* TRL standard: ``prompt`` is a non-empty string.
* TRL conversational: ``prompt`` is a non-empty list of ``{"role": str, "content": str}``.
* verl: conversational ``prompt`` plus ``data_source``, ``reward_model`` (a dict with
  ``ground_truth``) and ``extra_info``; ``reward_model["ground_truth"]`` is copied to a top-level
  ``ground_truth`` column so reward functions receive it as a keyword argument.

Every row gets a string ``prompt_id``. Any malformed input raises :class:`UserError` with a
one-line message that names the file, the line (JSON Lines) or row index, and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from explorl.errors import UserError

_MAX_COLUMNS_IN_MESSAGE = 12


class _Table:
    """Raw rows read from one source, with what is needed to point at a bad row."""

    def __init__(self, label: str, rows: list[Any], lines: list[int] | None = None) -> None:
        self.label = label
        self.rows = rows
        self.lines = lines

    def where(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.label}:{self.lines[index]}"
        return f"{self.label}: row {index}"


def load_rows(source: Any, *, name: str = "dataset") -> list[dict]:
    """Read ``source`` and return normalised rows (plain Python values, ``prompt_id`` added)."""
    table = read_source(source, name)
    if not table.rows:
        raise UserError(f"{table.label}: data set is empty (no rows)")
    return [_normalise_row(row, table.where(i)) for i, row in enumerate(table.rows)]


def columns_of(rows: list[dict]) -> dict[str, list]:
    """All columns except 'prompt' as lists aligned with rows (missing values -> None)."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key != "prompt":
                keys.setdefault(key, None)
    return {key: [row.get(key) for row in rows] for key in keys}


def read_source(source: Any, name: str) -> _Table:
    if isinstance(source, (str, os.PathLike)):
        return _read_path(Path(source), name)
    if isinstance(source, (list, tuple)):
        return _Table(name, list(source))
    table = _read_hf_object(source, name)
    if table is not None:
        return table
    raise UserError(
        f"{name}: unsupported data source of type {type(source).__name__} (expected a path to a "
        ".jsonl/.json/.parquet file or a saved datasets directory, a datasets.Dataset, or a "
        "list of dicts)"
    )


def _read_path(path: Path, name: str) -> _Table:
    if not path.exists():
        raise UserError(f"{name}: file not found: {path}")
    label = str(path)
    if path.is_dir():
        return _read_saved_dataset(path, label)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, label)
    if suffix == ".json":
        return _read_json(path, label)
    if suffix == ".parquet":
        return _read_parquet(path, label)
    raise UserError(
        f"{label}: unsupported file type {suffix or '(no extension)'!r} "
        "(expected .jsonl, .json, .parquet or a directory saved with datasets.save_to_disk)"
    )


def _read_jsonl(path: Path, label: str) -> _Table:
    rows: list[Any] = []
    lines: list[int] = []
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise UserError(f"{label}: cannot read file ({_one_line(exc)})") from None
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"{label}:{lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                    f"column {exc.start + 1})"
                ) from None
            if lineno == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise UserError(f"{label}:{lineno}: invalid JSON ({exc.msg})") from None
            lines.append(lineno)
    return _Table(label, rows, lines)


def _read_json(path: Path, label: str) -> _Table:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{label}: cannot read file ({_one_line(exc)})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{label}:{lineno}: not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None
    if not text.strip():
        raise UserError(f"{label}: data set is empty (no rows)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return _read_jsonl(path, label)
        raise UserError(f"{label}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise UserError(
            f'{label}: expected a JSON list of objects (or {{"data": [...]}}), '
            f"got {type_name(value)}"
        )
    return _Table(label, value)


def _read_parquet(path: Path, label: str) -> _Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:
        raise UserError(f"{label}: cannot read parquet file ({_one_line(exc)})") from None
    return _Table(label, rows)


def _read_saved_dataset(path: Path, label: str) -> _Table:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(
            f"{label}: directory is not a data set saved with datasets.save_to_disk "
            f"({_one_line(exc)})"
        ) from None
    table = _read_hf_object(loaded, label)
    if table is None:
        raise UserError(f"{label}: unsupported saved data set of type {type(loaded).__name__}")
    return table


def _read_hf_object(source: Any, label: str) -> _Table | None:
    module = type(source).__module__ or ""
    if not module.startswith("datasets"):
        return None
    import datasets

    if isinstance(source, datasets.DatasetDict):
        if "train" not in source:
            splits = ", ".join(source.keys()) or "none"
            raise UserError(f"{label}: DatasetDict has no 'train' split (splits: {splits})")
        source = source["train"]
    if isinstance(source, datasets.Dataset):
        return _Table(label, source.to_list())
    return None


def _normalise_row(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with a 'prompt' field, got {type_name(row)}")
    row = plain_value(row)
    if "prompt" not in row:
        raise UserError(f"{where}: missing 'prompt' column{_columns_hint(row)}")
    check_prompt(row["prompt"], where)
    reward_model = row.get("reward_model")
    if (
        "ground_truth" not in row
        and isinstance(reward_model, dict)
        and "ground_truth" in reward_model
    ):
        row["ground_truth"] = reward_model["ground_truth"]
    row["prompt_id"] = _prompt_id(row)
    return row


def check_prompt(prompt: Any, where: str) -> None:
    if prompt is None:
        raise UserError(f"{where}: prompt: missing value (null)")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: prompt: empty prompt")
        return
    if not isinstance(prompt, list):
        raise UserError(
            f"{where}: prompt: expected a string or a list of {{role, content}} messages, "
            f"got {type_name(prompt)}"
        )
    if not prompt:
        raise UserError(f"{where}: prompt: empty prompt (no messages)")
    for i, message in enumerate(prompt):
        field = f"prompt[{i}]"
        if not isinstance(message, dict):
            raise UserError(
                f"{where}: {field}: expected a {{role, content}} message, got {type_name(message)}"
            )
        for key in ("role", "content"):
            if key not in message:
                raise UserError(f"{where}: {field}: missing '{key}'")
            if not isinstance(message[key], str):
                raise UserError(
                    f"{where}: {field}: '{key}' must be a string, got {type_name(message[key])}"
                )
    if not any(message["content"].strip() for message in prompt):
        raise UserError(f"{where}: prompt: empty prompt (all messages have empty content)")


def _prompt_id(row: dict) -> str:
    for key in ("prompt_id", "id"):
        value = row.get(key)
        if value is not None and value != "":
            return str(value)
    encoded = json.dumps(row["prompt"], sort_keys=True).encode("utf-8")
    return hashlib.sha1(encoded).hexdigest()[:16]


def plain_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: plain_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    if isinstance(value, np.ndarray):
        return [plain_value(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _columns_hint(row: dict) -> str:
    if not row:
        return " (the row has no columns)"
    names = [str(key) for key in row]
    shown = ", ".join(names[:_MAX_COLUMNS_IN_MESSAGE])
    if len(names) > _MAX_COLUMNS_IN_MESSAGE:
        shown += ", ..."
    return f" (columns: {shown})"


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

"""Reading typed dataclass configs: one YAML file plus ``key=value`` overrides, each key checked
against its field's type, every error one line naming the file and line (or the override).

A field whose type is itself a dataclass is a section: ``herl: {gamma: 2}`` in YAML,
``herl.gamma=2`` on the command line. Field docstrings (the string under a field) are read from
the source for ``--help``.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from explorl.errors import UserError


class Lines:
    """Where each key came from, for error messages: ``file:line`` or ``override 'k=v'``."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        return self.where.get(key, "config")


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loading that refuses a key written twice in one mapping (the last would win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> tuple[dict, Lines]:
    """The mapping in ``path`` and the line of every key (nested keys as ``section.key``)."""
    lines = Lines()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: the config must be a mapping of key: value")

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}{k.value}"
                lines.where[key] = f"{path}:{k.start_mark.line + 1}"
                walk(v, key + ".")

    walk(node, "")
    return data, lines


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, YAML value); text that YAML would turn into a mapping or a null
    stays text."""
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict) or value is None and raw.strip() not in ("null", "~"):
        value = raw  # keep text such as "a: b" or "" as written
    return key, value


# --- types --------------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert the few safe cases (int -> float,
    numeric strings from ``key=value`` overrides, ``a,b`` -> a list)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or value in ("none", "None")):
            return None  # `key=none` on the command line clears an optional value
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, where)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        raise UserError(f"{where}: {key}: {value!r} is not one of "
                        f"{', '.join(repr(a) for a in args)}")
    if origin is list:
        if isinstance(value, str):  # key=a,b,c from the command line
            value = [v for v in value.split(",") if v]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # key=4 from the command line: a list of one
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key}: expected a list, got {value!r}")
        return [coerce(v, args[0] if args else Any, key, where) for v in value]
    if origin is dict:
        if isinstance(value, str):  # key={a: 1} from the command line
            with contextlib.suppress(yaml.YAMLError):
                value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key}: expected a mapping, got {value!r}")
        return value
    return _scalar(value, tp, key, where)


def _scalar(value: Any, tp: Any, key: str, where: str) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise UserError(f"{where}: {key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if tp is int and isinstance(value, int) and not isinstance(value, bool) \
                or tp is float and number:
            return tp(value)
        with contextlib.suppress(ValueError, TypeError):
            if isinstance(value, str):
                return tp(value)
        kind = "an integer" if tp is int else "a number"
        raise UserError(f"{where}: {key}: expected {kind}, got {value!r}")
    if tp is str:
        if isinstance(value, str) or number:
            return str(value)
        raise UserError(f"{where}: {key}: expected a string, got {value!r}")
    raise UserError(f"{where}: {key}: unsupported type {type_name(tp)}")


# --- sections -----------------------------------------------------------------------------------
def sections(cls: type) -> dict[str, type]:
    """Fields of ``cls`` whose type is a dataclass: name -> section class."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints[f.name])}


def _flatten(raw: dict, cls: type, lines: Lines, renamed: dict[str, str]) -> dict[str, Any]:
    """``{herl: {gamma: 2}}`` and ``{"herl.gamma": 2}`` alike -> ``{"herl.gamma": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key in sections(cls):
            if value is None:
                continue
            if not isinstance(value, dict):
                if key in renamed:  # a flat key of an earlier version, now a section's name
                    raise _unknown(key, set(), lines, renamed)
                raise UserError(f"{lines(key)}: {key}: expected a mapping of its keys, "
                                f"got {value!r}")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _unknown(key: str, known: set[str], lines: Lines, renamed: dict[str, str]) -> UserError:
    if key in renamed:
        return UserError(f"{lines(key)}: unknown config key {key!r} (now {renamed[key]})")
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.75)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return UserError(f"{lines(key)}: unknown config key {key!r}{hint}")


def build(cls: type, raw: dict[str, Any], lines: Lines,
          renamed: dict[str, str] | None = None) -> Any:
    """An instance of ``cls`` from plain data; every value type-checked."""
    parts = sections(cls)
    hints = {**typing.get_type_hints(cls), **{
        f"{name}.{k}": v for name, sec in parts.items()
        for k, v in typing.get_type_hints(sec).items()}}
    known = set(hints) - set(parts)
    values: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in parts}
    for key, value in _flatten(raw, cls, lines, renamed or {}).items():
        if key not in known:
            raise _unknown(key, known, lines, renamed or {})
        typed = coerce(value, hints[key], key, lines(key))
        section, _, name = key.partition(".")
        if name:
            nested[section][name] = typed
        else:
            values[key] = typed
    return cls(**values, **{name: parts[name](**v) for name, v in nested.items()})


def check_types(cfg: Any, lines: Lines, prefix: str = "") -> None:
    """Type-check every field of ``cfg`` and its sections (configs built in Python skip the
    loader); non-finite numbers are refused."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise UserError(f"{lines(key)}: {key}: expected a {hints[f.name].__name__}")
            check_types(value, lines, key + ".")
            continue
        coerce(value, hints[f.name], key, lines(key))
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{lines(key)}: {key}: must be a finite number, got {value}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML/JSON-safe view, sections nested (callables and in-memory data sets by name)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return to_dict(v)
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        name = getattr(v, "__qualname__", None) or type(v).__name__
        module = getattr(v, "__module__", None)
        return f"{module}:{name}" if callable(v) and module else f"<{name}>"

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


# --- help ---------------------------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def help_text(cls: type) -> str:
    """Every key of ``cls`` by section: ``key: type = default`` and the first sentence of its
    docstring."""
    out = ["keys (key=value on the command line, or key: value in a YAML file):"]
    todo: list[tuple[str, type]] = [("", cls)]
    todo += [(f"{name}.", sec) for name, sec in sections(cls).items()]
    for prefix, klass in todo:
        if prefix:
            doc = (inspect.getdoc(klass) or "").split("\n\n")[0].replace("\n", " ")
            out += ["", *textwrap.wrap(f"{prefix[:-1]}: {doc}", 100)]
        hints, docs = typing.get_type_hints(klass), field_docs(klass)
        for f in dataclasses.fields(klass):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            out.append(f"  {prefix}{f.name}: {type_name(hints[f.name])} = {_default(f)!r}")
            first = docs.get(f.name, "").split("\n\n")[0].replace("\n", " ")
            if first:
                out += textwrap.wrap(first, 96, initial_indent=" " * 6,
                                     subsequent_indent=" " * 6)
    return "\n".join(out)

"""Tools and environments in TRL's contract, and calling them safely.

``tools`` are plain functions; ``environment_factory`` is a class (or any callable without
arguments) whose instances have ``reset(**row)`` (its return, a string, is an observation added
to the prompt), any number of public methods (the tools of that episode) and optionally
``get_reward()`` (the episode's reward, a float). One instance per episode. A tool's schema, for
chat templates that render tools, comes from its signature and docstring (transformers'
``get_json_schema``).

A call runs in a worker thread: what it raises becomes the observation (``error: ...``,
counted); a call that outlives ``timeout``, or raises :class:`EpisodeFailed`, ends its episode,
which is masked and counted (a hung thread is left to finish on its own: Python cannot stop
it), so the step goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

from explorl.errors import UserError

NOT_TOOLS = ("reset", "get_reward", "close")


def check_environment(factory) -> None:
    """One line naming the factory when it cannot make environments of the contract."""
    name = getattr(factory, "__name__", repr(factory))
    if not callable(factory):
        raise UserError(f"environment_factory: {name} is not a class or a callable")
    if inspect.isclass(factory):
        if not callable(getattr(factory, "reset", None)):
            raise UserError(f"environment_factory: {name} has no reset() method (the contract: "
                            "reset(**row), public methods as tools, optional get_reward())")
        if not any(True for _ in public_methods(factory)):
            raise UserError(f"environment_factory: {name} has no public method to serve as a "
                            "tool")


def public_methods(obj) -> list[tuple[str, Callable]]:
    """``obj``'s public methods other than the contract's own: the tools it offers."""
    return [(name, fn) for name, fn in inspect.getmembers(obj, callable)
            if not name.startswith("_") and name not in NOT_TOOLS
            and (inspect.ismethod(fn) or inspect.isfunction(fn))]


def tools_of(functions: list[Callable], environment=None) -> dict[str, Callable]:
    """The tools of one episode by name: the plain functions and the environment's methods."""
    tools = {fn.__name__: fn for fn in functions}
    if environment is not None:
        tools.update(public_methods(environment))
    return tools


def schemas(functions: list[Callable], environment_class=None) -> list[dict]:
    """JSON schemas of the tools (the functions, and the environment class's methods), as chat
    templates take them; one line naming a tool whose type hints or docstring give none."""
    from transformers.utils import get_json_schema

    tools = tools_of(functions)
    if environment_class is not None:  # bound to a stand-in: the schema leaves out ``self``
        tools.update((name, types.MethodType(fn, object()))
                     for name, fn in public_methods(environment_class))
    out = []
    for name, fn in tools.items():
        try:
            out.append(get_json_schema(fn))
        except Exception as e:  # noqa: BLE001 - transformers' parsing errors vary
            raise UserError(f"tools: {name}: no JSON schema for the chat template ({e}); give "
                            "it type hints and a docstring with an Args: section") from None
    return out


class EpisodeFailed(Exception):
    """Raised by a tool (or ``reset``) when its episode cannot go on: the environment is gone.
    The episode ends, masked and counted."""


@dataclass
class CallResult:
    """What a tool call gave: the observation text, whether it failed, and whether its episode
    must end without a reward (the call hung, or raised :class:`EpisodeFailed`)."""

    text: str
    error: bool = False
    fatal: bool = False


def error_text(message: str) -> str:
    return f"error: {message}"


@dataclass
class Running:
    """A call on its way: its future (None: no such tool), the tool's name, when it began."""

    future: cf.Future | None
    name: str
    started: float


class ToolRunner:
    """Runs calls in worker threads, each at most ``timeout`` seconds: :meth:`start` one,
    :meth:`wait` for some, read each one's :meth:`outcome`."""

    def __init__(self, timeout: float | None = 30.0, workers: int = 16):
        self.timeout = timeout
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tool")

    def start(self, fn: Callable | None, name: str, arguments: dict) -> Running:
        future = self.pool.submit(fn, **arguments) if fn is not None else None
        return Running(future, name, time.monotonic())

    def outcome(self, call: Running, final: bool = False) -> CallResult | None:
        """What the call gave; None while it runs within its timeout (``final``: a call still
        running has timed out)."""
        if call.future is None:
            return CallResult(error_text(f"unknown tool {call.name!r}"), error=True)
        if not call.future.done():
            overdue = self.timeout is not None and \
                time.monotonic() - call.started >= self.timeout
            return CallResult(error_text(f"{call.name} timed out"), error=True, fatal=True) \
                if final or overdue else None
        error = call.future.exception()
        if error is None:
            return CallResult(str(call.future.result()))
        return CallResult(error_text(str(error)), error=True,
                          fatal=isinstance(error, EpisodeFailed))

    def wait(self, calls: list[Running], seconds: float | None = None,
             first: bool = False) -> None:
        """Until every call (``first``: one call) is done, a call's timeout passes, or
        ``seconds`` (None: no other limit)."""
        running = [c for c in calls if c.future is not None and not c.future.done()]
        if not running:
            return
        if self.timeout is not None:  # the first call's deadline, or the last one's
            due = (min if first else max)(c.started for c in running) + self.timeout \
                - time.monotonic()
            seconds = max(0.0, due if seconds is None else min(seconds, due))
        cf.wait([c.future for c in running], timeout=seconds,
                return_when=cf.FIRST_COMPLETED if first else cf.ALL_COMPLETED)

    def run(self, calls: list[tuple[Callable | None, str, dict]]) -> list[CallResult]:
        """``(function, name, arguments)`` per call, all at once; their results in order,
        after the slowest (at most ``timeout``)."""
        running = [self.start(*call) for call in calls]
        self.wait(running)
        return [self.outcome(c, final=True) for c in running]


def load_object(field: str, spec):
    """``spec`` itself when it is callable, else the object a ``module:name`` string names."""
    import importlib

    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(f"{field}: {spec!r}: expected a callable or a 'module:name' string")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise UserError(f"{field}: cannot import {module_name!r} ({type(e).__name__}: {e})") \
            from None
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise UserError(f"{field}: {module_name!r} has no callable {attr!r}")
    return obj

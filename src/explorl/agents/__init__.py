"""Multi-turn rollouts with tools and environments, in TRL's contract (``tools``,
``environment_factory``): :mod:`explorl.agents.tools` (the contract, calling safely),
:mod:`explorl.agents.formats` (how calls are written and answered),
:mod:`explorl.agents.rollout` (the episodes and their rewards), :mod:`explorl.agents.openenv`
(environments served by OpenEnv)."""

from __future__ import annotations

import inspect

from explorl.agents.formats import FORMATS
from explorl.agents.openenv import PREFIX, OpenEnvEnvironment, openenv_factory
from explorl.agents.rollout import AgentCollector
from explorl.agents.tools import check_environment, load_object, schemas
from explorl.errors import UserError
from explorl.rollout.collect import Collector


def build_collector(cfg, engine, scorer, tokenizer, dist, device, codec,
                    task_tools=()) -> Collector:
    """The collector a config asks for: single-turn, or episodes with tools when ``tools`` or
    ``environment_factory`` is set, or the task brings its own tools (``task_tools``)."""
    if not cfg.multi_turn:
        return Collector(engine, scorer, tokenizer, dist, device)
    tools, factory = load_tools(cfg, task_tools)
    return AgentCollector(engine, scorer, tokenizer, dist, device,
                          fmt=FORMATS[cfg.tool_call_format](tokenizer), codec=codec,
                          tools=tools, environment_factory=factory,
                          max_turns=cfg.max_tool_calling_iterations,
                          tool_timeout=cfg.tool_timeout,
                          straggler_wait=cfg.tool_straggler_wait,
                          environment_weight=cfg.environment_reward_weight)


def load_tools(cfg, task_tools=()) -> tuple[list, object]:
    """The tool functions (the config's, else the task's) and the environment factory."""
    factory = cfg.environment_factory
    if isinstance(factory, str) and factory.startswith(PREFIX):
        factory = openenv_factory(factory, cfg.openenv_action_field)
    elif factory is not None:
        factory = load_object("environment_factory", factory)
        check_environment(factory)
    return [load_object("tools", t) for t in cfg.tools or task_tools], factory


def prompt_tools(cfg, task_tools=()) -> list[dict] | None:
    """The tools' JSON schemas, for a chat template to show in the prompt (``hermes`` calls);
    an environment's methods are known from its class (an OpenEnv server's: ``act``)."""
    if not (cfg.multi_turn and cfg.tool_call_format == "hermes"):
        return None
    tools, factory = load_tools(cfg, task_tools)
    if isinstance(cfg.environment_factory, str) and cfg.environment_factory.startswith(PREFIX):
        factory = OpenEnvEnvironment
    if factory is not None and not inspect.isclass(factory):
        raise UserError("environment_factory: tool_call_format=hermes lists the environment's "
                        "methods in the prompt, read from its class; give the class itself")
    return schemas(tools, factory)


__all__ = ["AgentCollector", "build_collector", "prompt_tools"]

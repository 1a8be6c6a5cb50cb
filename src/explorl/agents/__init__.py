"""Multi-turn rollouts with tools and environments, in TRL's contract (``tools``,
``environment_factory``): :mod:`explorl.agents.tools` (the contract, calling safely),
:mod:`explorl.agents.formats` (how calls are written and answered),
:mod:`explorl.agents.rollout` (the episodes and their rewards), :mod:`explorl.agents.openenv`
(environments served by OpenEnv)."""

from __future__ import annotations

from explorl.agents.formats import FORMATS
from explorl.agents.openenv import PREFIX, openenv_factory
from explorl.agents.rollout import AgentCollector
from explorl.agents.tools import check_environment, load_object
from explorl.rollout.collect import Collector


def build_collector(cfg, engine, scorer, tokenizer, dist, device, codec,
                    task_tools=()) -> Collector:
    """The collector a config asks for: single-turn, or episodes with tools when ``tools`` or
    ``environment_factory`` is set, or the task brings its own tools (``task_tools``)."""
    specs = cfg.tools or list(task_tools)
    if not (specs or cfg.environment_factory):
        return Collector(engine, scorer, tokenizer, dist, device)
    factory = None
    if isinstance(cfg.environment_factory, str) and cfg.environment_factory.startswith(PREFIX):
        factory = openenv_factory(cfg.environment_factory, cfg.openenv_action_field)
    elif cfg.environment_factory is not None:
        factory = load_object("environment_factory", cfg.environment_factory)
        check_environment(factory)
    tools = [load_object("tools", t) for t in specs]
    return AgentCollector(engine, scorer, tokenizer, dist, device,
                          fmt=FORMATS[cfg.tool_call_format](tokenizer), codec=codec,
                          tools=tools, environment_factory=factory,
                          max_turns=cfg.max_tool_calling_iterations,
                          tool_timeout=cfg.tool_timeout,
                          environment_weight=cfg.environment_reward_weight)


__all__ = ["AgentCollector", "build_collector"]

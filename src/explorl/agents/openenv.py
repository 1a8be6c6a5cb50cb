"""Environments served by OpenEnv (``openenv-core``), in TRL's contract.

``environment_factory=openenv:<url>`` makes one :class:`OpenEnvEnvironment` per episode: a
WebSocket session with the server (OpenEnv keeps an episode's state per session), ``reset`` at
the start (the observation joins the prompt), one tool, ``act(action)``, that sends the model's
argument as the action's ``openenv_action_field`` and answers with the observation, and
``get_reward()``, the sum of the rewards the server gave. A server that cannot be reached is
retried ``retries`` times, then the episode is masked (:class:`~explorl.agents.tools.
EpisodeFailed`); past ``reward_failure_limit`` a step's failures stop the run with a
checkpoint. Install: ``pip install -e ".[openenv]"``.
"""

from __future__ import annotations

import contextlib
import json
import time

from explorl.agents.tools import EpisodeFailed
from explorl.errors import UserError

PREFIX = "openenv:"


def openenv_factory(spec: str, action_field: str = "message", retries: int = 2):
    """The factory ``environment_factory=openenv:<url>`` names."""
    try:
        import openenv.core  # noqa: F401
    except ImportError:
        raise UserError("environment_factory: openenv-core is not installed: pip install -e "
                        "\".[openenv]\"") from None
    url = spec[len(PREFIX):]
    if not url.startswith(("http://", "https://", "ws://", "wss://")):
        raise UserError(f"environment_factory: {spec!r}: expected openenv:http://host:port")

    def factory() -> OpenEnvEnvironment:
        return OpenEnvEnvironment(url, action_field, retries)

    factory.__name__ = "OpenEnvEnvironment"
    return factory


class OpenEnvEnvironment:
    """One episode's session with an OpenEnv server at ``url``."""

    def __init__(self, url: str, action_field: str = "message", retries: int = 2):
        self.url, self.action_field, self.retries = url, action_field, retries
        self.client, self.reward, self.done = None, 0.0, False

    def reset(self, **row) -> str:
        from openenv.core import GenericEnvClient

        def start():
            self.close()
            self.client = GenericEnvClient(base_url=self.url).sync()
            self.client.connect()
            return self.client.reset()

        return self._observed(self._retried(start))

    def act(self, action: str) -> str:
        """Sends an action to the environment and returns what it observes.

        Args:
            action: the action, as the environment reads it
        """
        if self.done:
            return "the episode is over"
        return self._observed(self._retried(
            lambda: self.client.step({self.action_field: action})))

    def get_reward(self) -> float:
        return self.reward

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):  # the session is gone either way
                self.client.close()
            self.client = None

    def _retried(self, call):
        for attempt in range(self.retries + 1):
            try:
                return call()
            except (ConnectionError, OSError) as e:
                if attempt == self.retries:
                    raise EpisodeFailed(f"OpenEnv server {self.url}: {e}") from None
                time.sleep(0.2 * 2 ** attempt)
            except Exception as e:  # noqa: BLE001 - the server refused the action
                if "closed" in type(e).__name__.lower() or "websocket" in str(e).lower():
                    raise EpisodeFailed(f"OpenEnv server {self.url}: {e}") from None
                raise

    def _observed(self, result) -> str:
        self.reward += float(result.reward or 0.0)
        self.done = bool(result.done)
        observation = result.observation
        if isinstance(observation, dict):
            observation = {k: v for k, v in observation.items()
                           if k not in ("reward", "done", "metadata")}
            if len(observation) == 1:
                return str(next(iter(observation.values())))
            return json.dumps(observation, sort_keys=True)
        return str(observation)

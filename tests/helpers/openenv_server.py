"""An OpenEnv environment server for the tests: guess the digit 7. ``reset`` says what to do;
each ``step`` takes a guess and answers higher, lower or right (reward 1, done).

    python tests/helpers/openenv_server.py PORT
"""

from __future__ import annotations

import sys
from uuid import uuid4

from openenv.core import Action, Environment, Observation, State, create_fastapi_app

TARGET = "7"


class Guess(Action):
    guess: str = ""


class Answer(Observation):
    text: str = ""


class GuessTheDigit(Environment[Guess, Answer, State]):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        super().__init__()
        self._state = State(episode_id=str(uuid4()), step_count=0)

    def reset(self, seed=None, episode_id=None, **kwargs) -> Answer:
        self._state = State(episode_id=episode_id or str(uuid4()), step_count=0)
        return Answer(text=" (guess a digit)", reward=0.0)

    def step(self, action: Guess, timeout_s=None, **kwargs) -> Answer:
        self._state.step_count += 1
        if action.guess.strip() == TARGET:
            return Answer(text="right", reward=1.0, done=True)
        higher = action.guess.strip().isdigit() and int(action.guess) < int(TARGET)
        return Answer(text="higher" if higher else "lower", reward=0.0)

    @property
    def state(self) -> State:
        return self._state


app = create_fastapi_app(GuessTheDigit, Guess, Answer, max_concurrent_envs=256)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

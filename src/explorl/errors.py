"""User-facing errors: one clear line, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (config, data, reward function, model path).

    The CLI prints ``explorl: error: <message>`` and exits with code 2. Raise it before anything
    is written to the output directory.
    """


class TrainingStopped(Exception):
    """A run that cannot usefully go on (too many failed rewards, non-finite updates in a row).

    A checkpoint of the last completed step is written first; the CLI prints
    ``explorl: stopped: <message>`` and exits with code 3.
    """


class Interrupted(Exception):
    """SIGTERM or SIGINT ended a run; a checkpoint of the last completed step was written.

    The CLI prints ``explorl: interrupted: <message>`` and exits with ``128 + signum`` (143 for
    SIGTERM, 130 for SIGINT), as a process ended by that signal would.
    """

    def __init__(self, signum: int, message: str, quiet: bool = False):
        super().__init__(message)
        self.signum, self.quiet = signum, quiet  # quiet: a process other than the first

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

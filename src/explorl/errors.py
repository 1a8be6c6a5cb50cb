"""User-facing errors: one clear line, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (config, data, reward function, model path).

    The CLI prints ``explorl: error: <message>`` and exits with code 2. Raise it before anything
    is written to the output directory.
    """

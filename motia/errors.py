"""User-facing errors: one clear line for the CLI, exit code 2, no traceback unless --debug."""


class MotiaError(Exception):
    """A problem with the user's input (file, config key, checkpoint) that they can fix.

    The message is one line naming the file or key and the fix. The CLI prints it
    as ``error: <message>`` and exits with code 2.
    """


class ConfigError(MotiaError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class InputError(MotiaError):
    """An input file (video, checkpoint, adapter) is missing, unreadable or of the wrong kind."""

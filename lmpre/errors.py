"""Errors a user can fix: each message says what was wrong and which setting or file to change."""


class LmpreError(Exception):
    """A mistake in the configuration or the inputs, not a bug: entry points print it without a traceback."""


class DataError(LmpreError):
    """The data source, its files or the prepared-data directory cannot be used as configured."""


class ConfigError(LmpreError, ValueError):
    """A setting that cannot work (e.g. an objective on the wrong kind of backbone)."""


class CheckpointError(LmpreError):
    """A checkpoint that cannot be used as asked: missing, unreadable, or from another run, model or data."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run; `message` says what was saved. Exits with 128 + the signal's number
    (130, 143), as a shell reports a process killed by that signal.

    A KeyboardInterrupt, so that cleanup written for Ctrl-C (e.g. stopping worker processes) also runs on SIGTERM.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

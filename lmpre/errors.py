"""Errors a user can fix: each message says what was wrong and which setting or file to change."""


class LmpreError(Exception):
    """A mistake in the configuration or the inputs, not a bug: entry points print it without a traceback."""


class DataError(LmpreError):
    """The data source, its files or the prepared-data directory cannot be used as configured."""


class ConfigError(LmpreError, ValueError):
    """A setting that cannot work (e.g. an objective on the wrong kind of backbone)."""

"""Errors a user can cause and fix; the CLI prints their message instead of a traceback."""


class BbtError(Exception):
    """Base of the errors whose message tells the user what to do."""


class DataError(BbtError):
    """The dataset is missing or malformed."""


class ModelError(BbtError):
    """A model, run or registry entry the command needs is missing."""


class ConfigError(BbtError, ValueError):
    """A params.yaml problem the user can fix."""

"""Errors that mean "bad input": reported as one line, never as a traceback."""


class KDHydraError(Exception):
    """Base class of every user-facing error: the message is the whole report."""


class ConfigError(KDHydraError):
    """A config value is out of its allowed range or does not fit the rest of the config."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class DataError(KDHydraError):
    """A dataset is missing, malformed, or does not fit what the config asks of it."""


class CheckpointError(KDHydraError):
    """A checkpoint is unreadable, corrupt, or does not fit the requested architecture."""

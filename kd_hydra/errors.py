"""Errors that mean "bad input": reported as one line, never as a traceback."""

import logging


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


def log_to_file_only(message: str, level: int = logging.ERROR) -> None:
    """Record a line already shown on the console (``error: ...``, ``warning: ...``) in the run log only."""
    logger = logging.getLogger("kd_hydra")
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)

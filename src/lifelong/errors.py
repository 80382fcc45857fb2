"""Errors a user can act on. Each message names the problem and the fix."""


class LifelongError(Exception):
    """Base class of every error `lifelong` raises on purpose."""


class ConfigError(LifelongError, ValueError):
    """A config key, value or combination is not allowed."""


class DataError(LifelongError, ValueError):
    """Input data is missing, malformed or does not fit the model."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data source is not on this machine; the message says how to get it."""


class StateError(LifelongError):
    """A run directory or checkpoint is missing, damaged, or belongs to another run."""


class TrainingDivergedError(LifelongError, ArithmeticError):
    """The loss became NaN or infinite; the message says where and what to change."""

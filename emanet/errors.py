"""Errors that are the user's to fix: reported as one line, without a traceback."""


class EmanetError(Exception):
    """A problem with the user's input (config, files on disk) rather than a bug."""


class DatasetNotFoundError(EmanetError):
    """A dataset folder or split list is missing."""


class ConfigError(EmanetError):
    """A config value is invalid."""


class CheckpointError(EmanetError):
    """A checkpoint is missing, unreadable or does not fit the model."""

"""Errors that are the user's to fix: reported as one line, without a traceback."""

import re


class EmanetError(Exception):
    """A problem with the user's input (config, files on disk) rather than a bug."""


class DatasetNotFoundError(EmanetError):
    """A dataset folder or split list is missing."""


class ConfigError(EmanetError):
    """A config value is invalid."""


class CheckpointError(EmanetError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not fit the model. The message summarises the differences;
    ``details`` lists every key, too long for a terminal line: it goes to the run's log file."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


class DatasetError(EmanetError):
    """A dataset file is missing, unreadable or inconsistent; the message names it."""


def one_line(error: EmanetError) -> str:
    """The message of ``error`` without the worker traceback a DataLoader adds.

    An error raised in a DataLoader worker is raised again in the main process with the
    worker's whole traceback as its message; the user's message is its last line.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]  # "emanet.errors.DatasetError: <message>"
        return re.sub(r"^[\w.]+Error: ", "", last)
    return text


class TrainingDivergedError(EmanetError):
    """The loss stopped being finite."""


class RunDirectoryInUseError(EmanetError):
    """Another training run holds the lock of the run directory."""


class TrainingStopped(Exception):
    """A signal (SIGTERM, SIGINT, SIGUSR1) stopped training after a step, with a checkpoint at
    that iteration. Not an error: it ends the program with its own status, so that a job
    script can tell it from success and from failure and requeue the job."""

    exit_status = 3

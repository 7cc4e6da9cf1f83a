"""Errors that are the user's to fix: reported as one line, without a traceback."""

import contextlib
import re
from collections.abc import Iterator


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


class PredictionStopped(Exception):
    """SIGINT or SIGTERM stopped a prediction run, whose predictions.json lists what was done
    (its line already printed): the program ends with the shell's status for an interrupt."""

    exit_status = 130


class MissingSectionError(EmanetError):
    """A Markdown file has no marked section (``<!-- NAME:begin -->`` ... ``end``) for a
    generated table."""


class OutOfMemoryError(EmanetError):
    """The memory allocator could not give what a forward or backward pass asked for. The
    message names what was running, the amount asked for and the settings that bound it."""


# How much a failed allocation asked for, in the messages of PyTorch's CPU allocator ("you
# tried to allocate 103079215104 bytes") and of its GPU ones ("Tried to allocate 96.00 GiB").
ALLOCATION_REQUEST = re.compile(r"tried to allocate ([\d.]+) ?(bytes|B|KiB|MiB|GiB|TiB)\b", re.IGNORECASE)
UNITS = {"bytes": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# What else a failed allocation says: the CPU allocator raises a plain RuntimeError, cuBLAS
# and cuDNN report their own failures.
OUT_OF_MEMORY_TEXTS = ("DefaultCPUAllocator", "out of memory", "_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator's failure (torch.OutOfMemoryError, a RuntimeError,
    for the GPUs; a plain RuntimeError for the CPU)."""
    return isinstance(error, RuntimeError) and (
        type(error).__name__ == "OutOfMemoryError" or any(text in str(error) for text in OUT_OF_MEMORY_TEXTS)
    )


def requested_bytes(error: BaseException) -> int | None:
    """The bytes the failed allocation of ``error`` asked for, if its message says."""
    found = ALLOCATION_REQUEST.search(str(error))
    return round(float(found[1]) * UNITS[found[2].lower()]) if found else None


def memory_amount(size: int) -> str:
    """``size`` bytes in GiB (MiB under a tenth of one): 96.0 GiB."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 / 10 else f"{size / 2**20:.1f} MiB"


@contextlib.contextmanager
def out_of_memory_explained(doing: str, fix: str) -> Iterator[None]:
    """Turn an allocator's failure in the block into an :class:`OutOfMemoryError`:
    "out of memory <doing>: the allocator was asked for 96.0 GiB; <fix>", ``fix`` naming the
    settings that bound the memory. Any other error passes unchanged."""
    try:
        yield
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        size = requested_bytes(error)
        asked = f"the allocator was asked for {memory_amount(size)}" if size is not None else "no memory was left"
        raise OutOfMemoryError(f"out of memory {doing}: {asked}; {fix}") from error

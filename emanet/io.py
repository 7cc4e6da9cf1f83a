"""File-system helpers shared by the data, model and engine layers: atomic writes, the
mode a plain ``open()`` would give, an advisory lock on a folder, and a lock file that
names its holder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from emanet.errors import MissingSectionError


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(temp_path)`` and rename the result onto ``path``.

    The rename is atomic on POSIX file systems, so a reader never sees a half-written file
    and an interrupted write leaves the previous version in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        # mkstemp creates the file readable by its owner only; give it the permissions a
        # plain open() would (0666 less the umask).
        os.chmod(temp, 0o666 & ~current_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def write_json(data: Any, path: str | Path) -> None:
    def write(temp: str) -> None:
        Path(temp).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")

    atomic_write(Path(path), write)


@contextlib.contextmanager
def exclusive_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (flock, released on close, so it
    dies with the process); locking the directory itself leaves no lock file behind."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


class LockHeld(Exception):
    """Another process holds a lock file; the message is what it wrote there ("pid N on host H")."""


@contextlib.contextmanager
def held_lock_file(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) without
    waiting, with this process's pid and host written in it for whoever is refused.

    flock is released when the descriptor closes, so the lock dies with the process: a
    killed holder leaves no stale lock, only its outdated note. Raises :class:`LockHeld`
    if another process holds it.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(os.pread(descriptor, 256, 0).decode(errors="replace").strip()) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


def replace_marked_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between the lines ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` of
    the Markdown file ``path`` (a generated table in a hand-written page), atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise MissingSectionError(f"{path} has no {begin} ... {end} section; add one where the table should go")
    text = text[: text.index(begin)] + f"{begin}\n{body}{end}" + text[text.index(end) + len(end):]
    atomic_write(path, lambda temp: Path(temp).write_text(text))


def marked_section(path: Path, name: str) -> str:
    """What :func:`replace_marked_section` put between the markers of ``name`` in ``path``."""
    text = path.read_text()
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    return text[text.index(begin) + len(begin): text.index(end)] if begin in text and end in text else ""


def to_plain(value: object) -> object:
    """A config value as Python and JSON take it: lists and dicts for config containers."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value

"""Checkpoints written atomically, and loaded with errors that say what to do."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emanet.errors import CheckpointError


def atomic_write(path: Path, write) -> None:
    """Call ``write(temp_path)`` and rename the result onto ``path``.

    The rename is atomic on POSIX file systems, so a reader never sees a half-written file
    and an interrupted write leaves the previous version in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(Path(path), lambda temp: torch.save(state, temp))


def write_json(data: Any, path: str | Path) -> None:
    def write(temp: str) -> None:
        Path(temp).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")

    atomic_write(Path(path), write)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found at {path.resolve()}: pass checkpoint=PATH to a .pt file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def load_model_weights(model: nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Load ``checkpoint['model']`` strictly, explaining a mismatch in one sentence."""
    if "model" not in checkpoint:
        raise CheckpointError(f"{path} holds no 'model' entry; is it a checkpoint of this project?")
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        trained_with = checkpoint.get("config", {}).get("name")
        hint = f"; it was trained with experiment={trained_with}" if trained_with else ""
        first_line = str(error).splitlines()[0]
        raise CheckpointError(
            f"{path} does not fit the configured model ({first_line}){hint}: "
            "pass the experiment the checkpoint was trained with"
        ) from error

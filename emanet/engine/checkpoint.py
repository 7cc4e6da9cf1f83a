"""Checkpoints written atomically, and loaded with errors that say what to do."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emanet.errors import CheckpointError
from emanet.io import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(Path(path), lambda temp: torch.save(state, temp))


def checkpoint_file(path: str | Path) -> Path:
    """``path`` as an absolute path, or the newest checkpoint (``last.pt``) of the run
    directory or the ``checkpoints/`` folder that ``path`` names."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate.resolve()
    return path.resolve()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``: a .pt file, or a run directory (its newest checkpoint)."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found at {path}: pass checkpoint=PATH to a .pt file or a run directory "
            "with checkpoints/last.pt"
        )
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
        raise CheckpointError(
            f"{path} does not fit the configured model ({state_dict_mismatch(error)}){hint}: "
            "pass the experiment the checkpoint was trained with"
        ) from error


def state_dict_mismatch(error: RuntimeError) -> str:
    """The first problem that ``load_state_dict`` lists (after its "Error(s) in loading"
    heading), and how many more there are."""
    lines = str(error).splitlines()
    problems = [line.strip() for line in lines[1:] if line.strip()] or lines[:1]
    more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
    return problems[0].rstrip(".") + more


def rng_states() -> dict[str, Any]:
    """Every random number generator training draws from (dropout, random bases...)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "python": random.getstate(),
        # As a tensor and plain numbers: checkpoints load with weights_only=True, which
        # refuses NumPy arrays.
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


CHECKPOINT_PATTERN = "iter_*.pt"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:07d}.pt"


def newest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest iteration in ``directory`` (only complete files
    carry that name: they are written under a temporary one and renamed)."""
    found = sorted(Path(directory).glob(CHECKPOINT_PATTERN))
    return found[-1] if found else None


def save_training_checkpoint(state: dict[str, Any], directory: Path, keep: int) -> Path:
    """Write ``iter_<iteration>.pt`` atomically, point ``last.pt`` at it, keep the newest ``keep``."""
    directory = Path(directory)
    path = directory / checkpoint_name(state["iteration"])
    save_checkpoint(state, path)
    # last.pt is a hard link: no second copy of a large file, replaced atomically.
    link = directory / ".last.pt.tmp"
    link.unlink(missing_ok=True)
    os.link(path, link)
    os.replace(link, directory / "last.pt")
    for old in sorted(directory.glob(CHECKPOINT_PATTERN))[:-keep]:
        old.unlink()
    return path

"""Glue between the Hydra entry points and the engine."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from emanet.errors import EmanetError, one_line

log = logging.getLogger("emanet")


def run_job(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> dict:
    """Run ``job(cfg, run_dir)`` in Hydra's run directory.

    Problems the user can fix (missing data, bad config values, a checkpoint that does
    not fit) end the program with one line naming the cause, not a traceback.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return job(cfg, run_dir)
    except EmanetError as error:
        message = one_line(error)
        log.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

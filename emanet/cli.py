"""Glue between the Hydra entry points and the engine."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from emanet.errors import EmanetError, one_line

log = logging.getLogger("emanet")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The config ``train.py`` / ``evaluate.py`` would run with these overrides, for scripts
    that call the engine directly (``config_name``: "train" or "evaluate")."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name, overrides)


def run_job(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> dict:
    """Run ``job(cfg, run_dir)`` in Hydra's run directory.

    Problems the user can fix (missing data, bad config values, a required key left
    unset, a checkpoint that does not fit) end the program with one line naming the
    cause, not a traceback.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return job(cfg, run_dir)
    except EmanetError as error:
        message = one_line(error)
    except MissingMandatoryValue as error:  # a ??? key of the config, e.g. checkpoint
        message = f"{error.full_key} is not set: pass {error.full_key}=... on the command line"
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

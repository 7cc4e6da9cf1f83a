"""Glue between the Hydra entry points and the engine."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from emanet.errors import EmanetError, one_line

log = logging.getLogger("emanet")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """The config ``train.py`` / ``evaluate.py`` would run with these overrides, for scripts
    that call the engine directly (``config_name``: "train" or "evaluate")."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name, quote_path_overrides(overrides))


def quote_path_overrides(overrides: list[str]) -> list[str]:
    """Quote the ``key=value`` overrides whose value is an existing file or folder that
    Hydra's override grammar would reject or read as a sweep.

    Sweep runs live in folders named after their overrides (``.../model.ema.train_stages=2,
    seed=1/``), and '=' or ',' in a value is a syntax error for Hydra, so
    ``checkpoint=<that folder>/checkpoints/last.pt`` would otherwise need hand quoting.
    Everything else (flags, sweeps such as ``checkpoint=a.pt,b.pt``, values Hydra reads
    as they are) is passed on unchanged.
    """
    parser = OverridesParser.create()
    quoted = []
    for override in overrides:
        key, _, value = override.partition("=")
        if value and not override.startswith("-") and value[0] not in ("'", '"') and Path(value).exists():
            try:
                readable = not parser.parse_override(override).is_sweep_override()
            except HydraException:
                readable = False
            if not readable:
                quote = "'" if "'" not in value else '"'
                override = f"{key}={quote}{value}{quote}"
        quoted.append(override)
    return quoted


def run_job(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> dict:
    """Run ``job(cfg, run_dir)`` in Hydra's run directory.

    Problems the user can fix (missing data, bad config values, a required key left
    unset, a checkpoint that does not fit) end the program with one line naming the
    cause, not a traceback.
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with one_line_errors():
        return job(cfg, run_dir)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """End the program (status 2) with one line naming the cause of a problem the user can
    fix: an :class:`EmanetError`, or a required (``???``) config key left unset."""
    try:
        yield
        return
    except EmanetError as error:
        message = one_line(error)
    except MissingMandatoryValue as error:  # a ??? key of the config, e.g. checkpoint
        message = f"{error.full_key} is not set: pass {error.full_key}=... on the command line"
    log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)

"""Glue between the Hydra entry points and the engine."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from emanet.config_checks import check_config
from emanet.engine.distributed import export_launcher_environment
from emanet.engine.runtime import usable_cores
from emanet.errors import CheckpointMismatchError, ConfigError, EmanetError, TrainingStopped, one_line

log = logging.getLogger("emanet")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


# hydra-submitit-launcher's launcher that runs each job as a process on this machine
# (LocalQueueConf._target_ in hydra_plugins/hydra_submitit_launcher/config.py).
SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def parallel_local_jobs(*, _root_: DictConfig) -> int | None:
    """``hydra.sweeper.max_batch_size`` (configs/train.yaml): how many jobs of a multirun
    Hydra's sweeper hands the launcher at once. Under ``hydra/launcher=submitit_local``, as
    many as the usable cores hold, each job taking ``tasks_per_node`` processes of
    ``runtime.threads`` threads (null, torch's default: a thread per core, so one job at a
    time); that launcher itself starts every job it is given at once. None (all at once)
    for the others: the basic launcher runs them one after another anyway, and a cluster
    bounds its own (SLURM's ``array_parallelism``)."""
    launcher = OmegaConf.select(_root_, "hydra.launcher")
    if launcher is None or launcher.get("_target_") != SUBMITIT_LOCAL:
        return None
    cores = usable_cores()
    threads = OmegaConf.select(_root_, "runtime.threads")
    if not (isinstance(threads, int) and threads >= 1):  # null; a bad value is refused by each job
        threads = cores
    return max(1, cores // (launcher.tasks_per_node * threads))


# Registered on import: train.py, evaluate.py and scripts/predict.py import this module
# before Hydra composes their config, and so does a submitit job when it loads their task.
OmegaConf.register_new_resolver("emanet.parallel_local_jobs", parallel_local_jobs, replace=True)


def compose_config(config_name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """The config ``train.py`` / ``evaluate.py`` would run with these overrides, for scripts
    that call the engine directly (``config_name``: "train", "evaluate" or "predict"),
    its values checked (:func:`emanet.config_checks.check_config`).

    Inside a running Hydra application the application's own config search path is used.
    """
    overrides = quote_path_overrides(list(overrides))
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name, overrides, return_hydra_config=return_hydra_config)
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name, overrides, return_hydra_config=return_hydra_config)
    check_config(cfg)
    return cfg


# The keys whose values name files or folders: only their values are looked up on the
# file system. Any other value (a 700-character sweep such as reproduce_paper's
# +iteration_cell=..., a list, a number) is not a path whatever a stat of it would say,
# and asking the file system about it can fail: pathlib raises ENAMETOOLONG for a name
# over NAME_MAX (255 bytes on Linux). A short explicit list rather than one derived from
# the composed config: the quoting runs on the command line, before Hydra composes
# anything, and a test checks the list against every experiment's config.
PATH_KEYS = frozenset({
    "checkpoint", "input", "data_root", "dataset.root", "model.backbone.pretrained",
    "hydra.run.dir", "hydra.sweep.dir",
})


def quote_path_overrides(overrides: list[str]) -> list[str]:
    """Quote the ``key=value`` overrides of a path key (:data:`PATH_KEYS`) whose value is an
    existing file or folder that Hydra's override grammar would reject or read as a sweep.

    Sweep runs live in folders named after their overrides (``.../model.ema.train_stages=2,
    seed=1/``), and '=' or ',' in a value is a syntax error for Hydra, so
    ``checkpoint=<that folder>/checkpoints/last.pt`` would otherwise need hand quoting.
    Everything else (flags, sweeps such as ``checkpoint=a.pt,b.pt``, values Hydra reads
    as they are, the values of other keys) is passed on unchanged.
    """
    parser = OverridesParser.create()
    quoted = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") in PATH_KEYS and value and value[0] not in ("'", '"') and existing_path(value):
            try:
                readable = not parser.parse_override(override).is_sweep_override()
            except HydraException:
                readable = False
            if not readable:
                quote = "'" if "'" not in value else '"'
                override = f"{key}={quote}{value}{quote}"
        quoted.append(override)
    return quoted


def existing_path(value: str) -> bool:
    """Whether ``value`` names an existing file or folder; a name the file system refuses
    (over NAME_MAX, a NUL byte) names none."""
    try:
        return Path(value).exists()
    except (OSError, ValueError):
        return False


def run_job(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> dict:
    """Run ``job(cfg, run_dir)`` in Hydra's run directory.

    Problems the user can fix (missing data, bad config values, a required key left
    unset, a checkpoint that does not fit) end the program with one line naming the
    cause, not a traceback.
    """
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    with one_line_errors():
        try:
            check_config(cfg)
        except ConfigError:
            remove_unused_run_dir(run_dir)
            raise
    export_launcher_environment()  # a SLURM or submitit task: its rank, as torchrun would set it
    note = eval_preset_note(hydra_config.job.config_name, list(hydra_config.overrides.task))
    if note and int(os.environ.get("RANK", 0)) == 0:
        log.warning("%s", note)
    with one_line_errors():
        return job(cfg, run_dir)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """End the program (status 2) with one line naming the cause of a problem the user can
    fix: an :class:`EmanetError`, or a required (``???``) config key left unset. The line is
    printed once, on stderr; the job's log file gets it too, with the full key lists of a
    checkpoint that does not fit. Training stopped by a signal ends with status 3 (its line
    is logged where it stopped)."""
    try:
        yield
        return
    except TrainingStopped:  # not an error: its own status lets a job script requeue
        sys.exit(TrainingStopped.exit_status)
    except EmanetError as error:
        message = one_line(error)
        details = error.details if isinstance(error, CheckpointMismatchError) else None
    except MissingMandatoryValue as error:  # a ??? key of the config, e.g. checkpoint
        message = f"{error.full_key} is not set: pass {error.full_key}=... on the command line"
        details = None
    log_to_file_only(logging.ERROR, message if details is None else f"{message}\n{details}")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def log_to_file_only(level: int, message: str) -> None:
    """Log ``message`` to the job's log file but not to the terminal, which gets its own line
    on stderr: logged the usual way, the line would show twice there. Hydra's job logging
    puts the file handler on the root logger, next to the console's."""
    if not log.isEnabledFor(level):
        return
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and level >= handler.level:
            handler.handle(record)


def remove_unused_run_dir(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote at startup (``.hydra/`` and
    the job's log): a run refused before it started leaves nothing behind. A directory
    with anything else in it (an earlier run's checkpoints) is left alone."""
    if run_dir.is_dir() and all(entry.name == ".hydra" or entry.suffix == ".log" for entry in run_dir.iterdir()):
        shutil.rmtree(run_dir)


# Window geometry only matters to windowed inference, the resizing convention only to
# rescaled passes: an experiment's value of these is not worth a note otherwise.
WINDOW_KEYS = ("crop_size", "stride", "crops_per_pass", "pad_to_window")


def eval_preset_note(config_name: str, overrides: Sequence[str]) -> str | None:
    """One line for an evaluation protocol chosen on the command line (``eval=NAME``) that
    does not run exactly as that preset alone: the ``eval.*`` settings the experiment keeps
    over it (an experiment's keys merge after the eval group's), and the experiment's own
    protocol where the preset changes the mode. None when there is nothing to say.

    A preset sets its own ``mode``, so ``eval=release_ss`` runs the release protocol even
    for an experiment that evaluates in windows; keys given on the command line
    (``eval.crop_size=...``) win over both and are not reported.
    """
    groups = [override.key_or_group for override in OverridesParser.create().parse_overrides(list(overrides))]
    presets = [text.partition("=")[2] for text, group in zip(overrides, groups, strict=True) if group == "eval"]
    if not presets:
        return None
    ran = compose_config(config_name, overrides, return_hydra_config=True)
    experiment = ran.hydra.runtime.choices.get("experiment")
    if experiment is None:
        return None
    eval_overrides = [text for text, group in zip(overrides, groups, strict=True) if group.split(".")[0] == "eval"]
    alone = OmegaConf.to_container(compose_config(config_name, [*eval_overrides, "~experiment"]).eval)
    ran_eval = OmegaConf.to_container(ran.eval)
    ignored = set(WINDOW_KEYS) if ran_eval["mode"] != "slide" else set()
    if list(ran_eval["scales"]) == [1.0]:
        ignored.update(("align_corners", "logits_align_corners"))
    kept = [key for key, value in ran_eval.items() if key not in ignored and alone.get(key) != value]
    parts = []
    if kept:
        settings = ", ".join(f"eval.{key}={ran_eval[key]}" for key in kept)
        replaced = ", ".join(str(alone.get(key)) for key in kept)
        parts.append(
            f"experiment={experiment}'s {settings} {'wins' if len(kept) == 1 else 'win'} over the preset's "
            f"{replaced} (pass eval.KEY=VALUE to change)"
        )
    without_preset = [text for text, group in zip(overrides, groups, strict=True) if group != "eval"]
    default = compose_config(config_name, without_preset, return_hydra_config=True)
    if default.eval.mode != ran_eval["mode"]:
        parts.append(
            f"mode {ran_eval['mode']} instead of experiment={experiment}'s own "
            f"eval={default.hydra.runtime.choices.eval} (mode {default.eval.mode})"
        )
    return f"eval={presets[-1]}: " + "; ".join(parts) if parts else None

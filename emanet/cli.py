"""Glue between the Hydra entry points and the engine."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import MissingMandatoryValue

from emanet.config_checks import KEYS, check_config
from emanet.config_keys import check_command_line, check_overrides, hydra_session
from emanet.data import fill_folder_classes
from emanet.engine.distributed import export_launcher_environment
from emanet.engine.run_directory import check_writable, own_run_dir, refuse_if_in_use, training_run_of
from emanet.engine.runtime import log_to_file_only, usable_cores
from emanet.errors import (
    CheckpointMismatchError,
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    EmanetError,
    PredictionStopped,
    TrainingStopped,
    one_line,
)
from emanet.renamed_keys import rename_old_keys

log = logging.getLogger("emanet")

# The configs ship inside the package, so that an installed copy finds them from any folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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


def key_help(*keys: str) -> str:
    """``--help``'s lines for ``keys`` (configs/hydra/help/train.yaml), from the schema:
    each key with the values it allows and what it does, indented as the first line is."""
    width = max(len(key) for key in keys)
    return "\n  ".join(f"{key:<{width}}  {KEYS[key][0].describe()}: {KEYS[key][1]}" for key in keys)


OmegaConf.register_new_resolver("emanet.key_help", key_help, replace=True)


def compose_config(config_name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """The config ``train.py`` / ``evaluate.py`` would run with these overrides, for scripts
    and tests that call the engine directly (``config_name``: "train", "evaluate" or
    "predict"), checked as the entry points check theirs: the overrides against the schema
    (:func:`emanet.config_keys.check_overrides`), then the composed values
    (:func:`emanet.config_checks.check_config`).

    Inside a running Hydra application the application's own config search path is used.
    """
    overrides = quote_path_overrides(list(overrides))
    with hydra_session(CONFIG_DIR):
        check_overrides(config_name, overrides, CONFIG_DIR)
        cfg = compose(config_name, overrides, return_hydra_config=return_hydra_config)
    fill_folder_classes(cfg)
    check_config(cfg)
    return cfg


def compose_unchecked(config_name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """The config of ``config_name`` with ``overrides``, unchecked: for comparing configs
    (what an eval preset changes), where keys may be left unset (``~experiment``)."""
    with hydra_session(CONFIG_DIR):
        return compose(config_name, quote_path_overrides(list(overrides)), return_hydra_config=return_hydra_config)


# The keys whose values name files or folders: only their values are looked up on the
# file system. Any other value (a 700-character sweep such as reproduce_paper's
# +iteration_cell=..., a list, a number) is not a path whatever a stat of it would say,
# and asking the file system about it can fail: pathlib raises ENAMETOOLONG for a name
# over NAME_MAX (255 bytes on Linux). A short explicit list rather than one derived from
# the composed config: the quoting runs on the command line, before Hydra composes
# anything, and a test checks the list against every experiment's config.
PATH_KEYS = frozenset({
    "checkpoint", "input", "data_root", "dataset.root", "model.backbone.pretrained", "model.init_from",
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


def refuse_unknown_overrides(config_name: str, argv: Sequence[str]) -> None:
    """End the program (status 2, one line) when the command line of the entry point of
    ``config_name`` overrides a key no part of the config reads (a typo: Hydra would add
    ``+schedule.iteratons=5`` and run without it) or chooses a group option that does not
    exist: before Hydra composes anything or creates a run directory
    (:func:`emanet.config_keys.check_command_line`).

    evaluate.py and predict.py given a training run's checkpoint start from that run's
    config (:func:`start_from_training_run`): the keys of its experiment are known too."""
    with one_line_errors():
        check_command_line(config_name, [*trained_with(config_name, argv), *argv], CONFIG_DIR)


def trained_with(config_name: str, argv: Sequence[str]) -> list[str]:
    """The recorded overrides of the training run whose checkpoint the command line of a
    checkpoint job names (the last ``checkpoint=`` that is not a sweep); none otherwise."""
    if config_name not in CHECKPOINT_JOBS:
        return []
    values = [arg.partition("=")[2].strip("'\"") for arg in argv if arg.startswith("checkpoint=")]
    run_dir = training_run_of(values[-1]) if values and "," not in values[-1] else None
    return recorded_overrides(run_dir) if run_dir is not None else []


def run_job(job: Callable[[DictConfig, Path], dict], cfg: DictConfig) -> dict:
    """Run ``job(cfg, run_dir)`` in Hydra's run directory.

    Problems the user can fix (missing data, bad config values, a required key left
    unset, a checkpoint that does not fit) end the program with one line naming the
    cause, not a traceback.
    """
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    with one_line_errors():
        cfg, note = start_from_training_run(cfg, hydra_config.job.config_name, list(hydra_config.overrides.task))
        if note and int(os.environ.get("RANK", 0)) == 0:
            log.info("%s", note)
        try:
            fill_folder_classes(cfg)
            check_config(cfg)
        except (ConfigError, DatasetError, DatasetNotFoundError):
            remove_unused_run_dir(run_dir)
            raise
    export_launcher_environment()  # a SLURM or submitit task: its rank, as torchrun would set it
    trained = training_run_of(str(cfg.checkpoint)) if "checkpoint" in cfg and not OmegaConf.is_missing(
        cfg, "checkpoint") else None
    run_overrides = recorded_overrides(trained) if trained is not None else []
    task = list(hydra_config.overrides.task)
    # A preset the training run chose is the run's, not news: only the command line's are told about.
    chosen_here = any(override.startswith("eval=") for override in task)
    note = eval_preset_note(hydra_config.job.config_name, [*run_overrides, *task]) if chosen_here else None
    if note and int(os.environ.get("RANK", 0)) == 0:
        log.warning("%s", note)
    with one_line_errors():
        return job(cfg, run_dir)


class RunDirectories(Callback):
    """Hydra callback (``hydra.callbacks`` in configs/train.yaml) that settles a single run's
    directory before Hydra writes anything there (its ``.hydra/`` records, the log file):

    * evaluate.py and predict.py given a training run's checkpoint are named after that
      run's experiment (``runs/<its name>/eval_<time>``), unless ``name=`` is passed;
    * pointed at another job's run directory, they write into a folder of their own inside
      it (:func:`~emanet.engine.run_directory.own_run_dir`), said in the log;
    * a run directory another job of the same kind is using, or that cannot be written
      (under a file, read-only), is refused in one line, exit 2.

    A multirun's sweep directory is checked for writing; its jobs' folders are the sweep's.
    """

    def __init__(self) -> None:
        self.notes: list[str] = []

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        with one_line_errors():
            job = config.hydra.job.config_name
            user_keys = {override.lstrip("+~").partition("=")[0] for override in config.hydra.overrides.task}
            if job in CHECKPOINT_JOBS and not OmegaConf.is_missing(config, "checkpoint") and "name" not in user_keys:
                trained = training_run_of(str(config.checkpoint))
                if trained is not None:
                    with read_write(config), open_dict(config):
                        config.name = OmegaConf.load(trained / "config.yaml").get("name", config.name)
            run_dir, note = own_run_dir(Path(str(config.hydra.run.dir)), job)
            with read_write(config.hydra.run):  # resolved once: ${now:...} would move on
                config.hydra.run.dir = str(run_dir)
            if note:
                self.notes.append(note)
            check_writable(run_dir, "hydra.run.dir")
            refuse_if_in_use(run_dir, job)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        with one_line_errors():
            check_writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: object) -> None:
        for note in self.notes:  # logging is set up by now
            log.warning("%s", note)
        self.notes.clear()


# The jobs that read a trained checkpoint, and the keys of theirs that are not the training's.
CHECKPOINT_JOBS = ("evaluate", "predict")


def start_from_training_run(
    cfg: DictConfig, config_name: str, overrides: Sequence[str]
) -> tuple[DictConfig, str | None]:
    """For evaluate.py and predict.py given a checkpoint of a training run directory: the
    config that run trained with (its config.yaml), the command line's overrides on top,
    and a line saying so; ``cfg`` itself, and None, for any other job or checkpoint.

    Nobody has to retype how a run was trained (its experiment, model and dataset settings,
    the demo's size): an evaluation of a run trained with ``dataset.generate.num_train=16``
    scores that run's val split. What the command line sets is what differs between the
    config composed with the run's own overrides (its ``.hydra/overrides.yaml``) followed
    by the command line's and the one composed without the command line's: so
    ``experiment=NAME`` naming the run's own experiment changes nothing, ``eval=ss`` sets
    the preset's keys, and ``model.ema.eval_stages=3`` that key. Keys the run's config does
    not have (settings added since, the job's own such as ``checkpoint``) keep their
    composed values.
    """
    if config_name not in CHECKPOINT_JOBS or OmegaConf.is_missing(cfg, "checkpoint"):
        return cfg, None
    run_dir = training_run_of(str(cfg.checkpoint))
    if run_dir is None:
        return cfg, None
    trained = OmegaConf.load(run_dir / "config.yaml")
    rename_old_keys(trained)
    run_overrides = recorded_overrides(run_dir)
    own = [override for override in overrides if not is_hydras(override)]
    # The job's own keys (checkpoint, input): the same in both compositions, however set.
    job_only = [override for override in own if override.lstrip("+~").partition("=")[0].split(".")[0] not in trained]
    composed = compose_unchecked(config_name, [*run_overrides, *own])
    without_command_line = compose_unchecked(config_name, [*run_overrides, *job_only])
    # Resolved (a required key left unset stays "???"): data_root=DIR moves dataset.root, which
    # the run's config holds resolved, as it would move it for a training.
    resolved = OmegaConf.to_container(composed, resolve=True, throw_on_missing=False)
    command_line = changed_keys(
        OmegaConf.to_container(without_command_line, resolve=True, throw_on_missing=False), resolved
    )
    OmegaConf.set_struct(composed, False)  # the run's config may hold keys of an experiment not composed here
    merged = OmegaConf.merge(composed, trained)
    for key in (*job_settings(config_name), *command_line):
        OmegaConf.update(merged, key, value_at(resolved, key), merge=False, force_add=True)
    OmegaConf.set_struct(merged, True)
    set_on_top = ", ".join(f"{key}={value_at(resolved, key)}" for key in command_line) or "nothing"
    note = (
        f"starting from {run_dir / 'config.yaml'}, the config of the run that wrote the checkpoint; "
        f"the command line sets {set_on_top} on top"
    )
    return merged, note


def is_hydras(override: str) -> bool:
    """Whether ``override`` sets one of Hydra's own keys or groups (``hydra.run.dir=...``,
    ``hydra/launcher=...``): where a job runs, not what it computes."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def recorded_overrides(run_dir: Path) -> list[str]:
    """The config overrides a run was started with (Hydra's ``.hydra/overrides.yaml``; none
    for a run made without Hydra's records), Hydra's own left out."""
    recorded = run_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(recorded) if recorded.is_file() else []
    return [str(override) for override in overrides if not is_hydras(str(override))]


def job_settings(config_name: str) -> list[str]:
    """The dotted keys that the primary config ``configs/<config_name>.yaml`` and the primary
    configs it builds on, other than train's, set themselves (predict's
    ``eval.save_predictions: true``): the job's own, which a training run's config does not
    replace."""
    primary = OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")
    keys = changed_keys({}, OmegaConf.to_container(primary))
    keys = [key for key in keys if key.split(".")[0] not in ("defaults", "hydra")]
    for default in primary.get("defaults", []):
        builds_on = isinstance(default, str) and default not in ("train", "_self_")
        if builds_on and (CONFIG_DIR / f"{default}.yaml").is_file():
            keys += job_settings(default)
    return keys


def value_at(container: dict, key: str) -> object:
    """The value of the dotted ``key`` in a config container (None where it has none)."""
    for name in key.split("."):
        container = container.get(name) if isinstance(container, dict) else None
    return container


def changed_keys(before: object, after: object, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config containers (lists compared whole)."""
    if isinstance(before, dict | None) and isinstance(after, dict | None) and (before or after) is not None:
        before, after = before or {}, after or {}
        return [
            key
            for name in sorted(set(before) | set(after), key=str)
            for key in changed_keys(before.get(name), after.get(name), f"{prefix}.{name}" if prefix else str(name))
        ]
    return [] if before == after else [prefix]


@contextmanager
def one_line_errors() -> Iterator[None]:
    """End the program (status 2) with one line naming the cause of a problem the user can
    fix: an :class:`EmanetError`, or a required (``???``) config key left unset. The line is
    printed once, on stderr; the job's log file gets it too, with the full key lists of a
    checkpoint that does not fit. Training stopped by a signal ends with status 3, prediction
    with 130 (their lines are printed and logged where they stopped)."""
    try:
        yield
        return
    except (TrainingStopped, PredictionStopped) as stopped:  # not errors: their own status tells them apart
        sys.exit(stopped.exit_status)
    except EmanetError as error:
        message = one_line(error)
        details = error.details if isinstance(error, CheckpointMismatchError) else None
    except MissingMandatoryValue as error:  # a ??? key of the config, e.g. checkpoint
        message = f"{error.full_key} is not set: pass {error.full_key}=... on the command line"
        details = None
    log_to_file_only(logging.ERROR, message if details is None else f"{message}\n{details}")
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def remove_unused_run_dir(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote at startup (``.hydra/`` and
    the job's log) and the job's lock: a run refused before it started leaves nothing
    behind. A directory with anything else in it (an earlier run's checkpoints) is left
    alone."""
    startup = (".log", ".lock")
    if run_dir.is_dir() and all(entry.name == ".hydra" or entry.suffix in startup for entry in run_dir.iterdir()):
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
    ran = compose_unchecked(config_name, overrides, return_hydra_config=True)
    experiment = ran.hydra.runtime.choices.get("experiment")
    if experiment is None:
        return None
    eval_overrides = [text for text, group in zip(overrides, groups, strict=True) if group.split(".")[0] == "eval"]
    alone = OmegaConf.to_container(compose_unchecked(config_name, [*eval_overrides, "~experiment"]).eval)
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
    default = compose_unchecked(config_name, without_preset, return_hydra_config=True)
    if default.eval.mode != ran_eval["mode"]:
        parts.append(
            f"mode {ran_eval['mode']} instead of experiment={experiment}'s own "
            f"eval={default.hydra.runtime.choices.eval} (mode {default.eval.mode})"
        )
    return f"eval={presets[-1]}: " + "; ".join(parts) if parts else None

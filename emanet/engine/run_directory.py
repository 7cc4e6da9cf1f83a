"""Run directories belong to the job that made them: a training run's records (its
config.yaml, metrics.json, checkpoints) are never overwritten by an evaluation or a
prediction pointed at it, and two jobs never write into one directory at once."""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from emanet.engine.distributed import World, broadcast_from_main
from emanet.errors import ConfigError, RunDirectoryInUseError
from emanet.io import LockHeld, held_lock_file

# The jobs, by the name of their primary config (configs/<job>.yaml), and what a person calls
# one of them in a message.
JOB_NAMES = {"train": "training run", "evaluate": "evaluation", "predict": "prediction"}
# Where an evaluation or a prediction pointed at another job's run directory writes: a
# folder of its own inside it, named after the time it started.
OWN_FOLDERS = {"evaluate": "eval", "predict": "predict"}
# What a job leaves in its run directory that another job would overwrite.
RECORDS = ("config.yaml", "metrics.json", "predictions.json", "checkpoints")


def lock_name(job: str) -> str:
    return f"{job}.lock"


def training_run_of(checkpoint: str | Path) -> Path | None:
    """The training run directory that wrote ``checkpoint`` (a run directory, its
    ``checkpoints/`` folder or a file in that folder), if it holds the run's config.yaml;
    None for a checkpoint outside a run directory (an imported one)."""
    path = Path(checkpoint).expanduser()
    candidates = [path, path.parent] if path.is_dir() else []
    if path.parent.name == "checkpoints":
        candidates.append(path.parent.parent)
    for candidate in candidates:
        if (candidate / "config.yaml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate.resolve()
    return None


def made_by(run_dir: Path) -> str | None:
    """The job that made ``run_dir``: a folder with checkpoints is a training run's, else the
    job Hydra recorded in ``.hydra/hydra.yaml``, else (a job run without Hydra) the one
    whose record it holds: predictions.json a prediction's, metrics.json an evaluation's;
    None for a folder of none of these."""
    if (run_dir / "checkpoints").is_dir():
        return "train"
    hydra_record = run_dir / ".hydra" / "hydra.yaml"
    if hydra_record.is_file():
        try:
            return OmegaConf.select(OmegaConf.load(hydra_record), "hydra.job.config_name")
        except Exception:  # a damaged record says nothing about its job
            return None
    if (run_dir / "predictions.json").is_file():
        return "predict"
    if (run_dir / "metrics.json").is_file():
        return "evaluate"
    return None


def own_run_dir(run_dir: Path, job: str, now: datetime.datetime | None = None) -> tuple[Path, str | None]:
    """The folder ``job`` writes into when asked to write into ``run_dir``, and a line saying
    why when that is another one.

    A training run writes where it is told (re-running it resumes). An evaluation or a
    prediction writes into ``run_dir`` when that is new, empty, or its own kind's and
    unfinished business: a prediction's (re-running one resumes it), an evaluation's that
    did not finish (no metrics.json). Any other folder holding records (a training run's,
    a finished evaluation's, files of the same names of anyone's) keeps them: the job writes
    into ``run_dir/eval/<time>`` or ``run_dir/predict/<time>`` instead.
    """
    if job not in OWN_FOLDERS or not run_dir.is_dir():
        return run_dir, None
    owner = made_by(run_dir)
    held = [name for name in RECORDS if (run_dir / name).exists()]
    resumable = owner == job and (job == "predict" or "metrics.json" not in held)
    if not held or resumable:
        return run_dir, None
    stamp = (now or datetime.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    own = run_dir / OWN_FOLDERS[job] / stamp
    whose = f"a {JOB_NAMES[owner]}'s records" if owner in JOB_NAMES else ", ".join(held)
    return own, f"{run_dir} holds {whose}, which this {JOB_NAMES[job]} leaves alone: it writes into {own}"


def check_writable(run_dir: Path, key: str) -> None:
    """Refuse, in one line naming ``key``, a run directory that cannot be created or written:
    under a regular file, on a read-only file system, without permission. Checked before
    anything is written, so that a job does not fail later with a traceback from the first
    writer (the log file's handler)."""
    missing = []
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
        missing.append(folder)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        for folder in missing:  # remove what this check made
            try:
                folder.rmdir()
            except OSError:
                break
        reason = error.strerror or str(error)
        blocker = next((folder for folder in (run_dir, *run_dir.parents) if folder.exists()), None)
        if blocker is not None and not blocker.is_dir():
            reason = f"{blocker} is a file, not a folder"
        raise ConfigError(
            f"cannot write the run directory {run_dir} ({key}): {reason}; pass {key}=<a folder you can write>"
        ) from error


def refuse_if_in_use(run_dir: Path, job: str) -> None:
    """Refuse ``run_dir`` while another process of ``job``'s kind holds its lock (checked
    before Hydra writes its records there; the job takes the lock itself when it starts)."""
    if (run_dir / lock_name(job)).is_file():
        with ExitStack() as held:
            try:
                held.enter_context(held_lock_file(run_dir / lock_name(job)))
            except LockHeld as holder:
                raise RunDirectoryInUseError(in_use_message(run_dir, job, str(holder))) from None


def in_use_message(run_dir: Path, job: str, holder: str) -> str:
    return (
        f"run directory {run_dir} is in use by another {JOB_NAMES[job]} ({holder or 'holder unknown'}, "
        f"per {lock_name(job)}): wait for it to end, or pass another hydra.run.dir"
    )


@contextmanager
def run_directory_lock(run_dir: Path, world: World | None = None, job: str = "train") -> Iterator[None]:
    """Rank 0 (of ``world``; None: this one process) holds the lock of ``run_dir`` meanwhile
    (``<job>.lock``, an flock that dies with the process): two jobs in one directory would
    overwrite each other's checkpoints, metrics or outputs. Every process refuses a
    directory that another holds, naming its pid and host."""
    with ExitStack() as held:
        refusal = None
        if world is None or world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                held.enter_context(held_lock_file(run_dir / lock_name(job)))
            except LockHeld as holder:
                refusal = in_use_message(run_dir, job, str(holder))
        refusal = broadcast_from_main(refusal)
        if refusal:
            raise RunDirectoryInUseError(refusal)
        yield

"""Checkpoints written atomically with a SHA-256 digest, and loaded after checking it, with
errors that say what to do."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from emanet.errors import CheckpointError, CheckpointMismatchError
from emanet.io import atomic_write

log = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically, with its SHA-256 digest in ``<path>.sha256``.

    The digest is recorded before the checkpoint takes its name, so no checkpoint of this
    version exists without one. A full disk is reported in one line.
    """
    path = Path(path)

    def write(temp: str) -> None:
        torch.save(state, temp)
        with open(temp, "rb") as file:
            line = f"{sha256_of(file)}  {path.name}\n"  # the format of sha256sum, which can check it
        atomic_write(digest_file(path), lambda digest_temp: Path(digest_temp).write_text(line))

    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        raise CheckpointError(disk_full_message(path)) from error


def digest_file(path: Path) -> Path:
    """Where the SHA-256 digest of the checkpoint ``path`` is recorded."""
    return path.with_name(path.name + ".sha256")


def sha256_of(file: BinaryIO) -> str:
    return hashlib.file_digest(file, "sha256").hexdigest()


def is_disk_full(error: OSError | RuntimeError) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch's archive writer reports a failed write without its errno ("unexpected pos 704 vs 598").
    return "unexpected pos" in str(error) or "file write failed" in str(error)


def disk_full_message(path: Path) -> str:
    free = shutil.disk_usage(path.parent).free
    previous = path if path.exists() else newest_checkpoint(path.parent)
    intact = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was replaced"
    return (
        f"cannot write checkpoint {path}: the disk is full ({free:,} bytes free in {path.parent}); {intact}: "
        "free some space and run the same command again"
    )


def checkpoint_file(path: str | Path) -> Path:
    """``path`` as an absolute path, or the newest checkpoint (``last.pt``) of the run
    directory or the ``checkpoints/`` folder that ``path`` names."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate.resolve()
    return path.resolve()


def load_checkpoint(path: str | Path, setting: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint at ``path``: a .pt file, or a run directory (its newest checkpoint).
    ``setting`` is the key that gave the path, which a missing file's message tells to pass."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found at {path}: pass {setting}=PATH to a .pt file or a run directory "
            "with checkpoints/last.pt"
        )
    try:
        with open(path, "rb") as file:  # checked and read through one descriptor: the same file
            if os.fstat(file.fileno()).st_size == 0:
                raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
            check_digest(file, path)
            return torch.load(file, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # a truncated or foreign file: say which one
        raise CheckpointError(f"cannot read checkpoint {path}: {str(error) or type(error).__name__}") from error


def check_digest(file: BinaryIO, path: Path) -> None:
    """Compare the open checkpoint ``file`` with its recorded SHA-256 digest; a checkpoint
    without one (written by an earlier version of this project) loads with a warning."""
    record = digest_record(path, os.fstat(file.fileno()))
    if record is None:
        log.warning(
            "checkpoint %s has no SHA-256 digest (%s; written by an earlier version?): loading it unverified",
            path, digest_file(path).name,
        )
        return
    expected = (record.read_text().split() or [""])[0]
    actual = sha256_of(file)
    file.seek(0)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its SHA-256 digest is {actual}, but {record} records {expected}"
        )


def digest_record(path: Path, opened: os.stat_result) -> Path | None:
    """The digest file of the opened checkpoint ``path``.

    For a hard link to a training checkpoint (``last.pt``), that of the ``iter_*.pt`` that
    is the opened file: while a run moves ``last.pt`` on, its own digest may already be the
    next one's. ``last.pt.sha256`` serves a copy of the folder, where the link is lost.
    """
    for candidate in path.parent.glob(CHECKPOINT_PATTERN):
        if digest_file(candidate).is_file() and is_same_file(candidate, opened):
            return digest_file(candidate)
    return digest_file(path) if digest_file(path).is_file() else None


def is_same_file(path: Path, opened: os.stat_result) -> bool:
    try:
        return os.path.samestat(path.stat(), opened)
    except FileNotFoundError:  # rotated away by a running training meanwhile
        return False


def load_model_weights(
    model: nn.Module, checkpoint: dict[str, Any], path: str | Path, configured: DictConfig | None = None
) -> None:
    """Load ``checkpoint['model']`` strictly. A mismatch is explained in one line that leads
    with the cause and the fix and summarises the keys that differ; the error carries their
    full lists for the run's log file (tens of thousands of characters for another
    architecture).

    With ``configured`` (the config the model was built from), the cause names the
    ``model.*`` settings (and ``dataset.num_classes``) the checkpoint's recorded training
    config has other values of, and ``experiment=NAME`` only when it was another one.
    """
    require_model_entry(checkpoint, path)
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except RuntimeError as error:
        trained = checkpoint.get("config") or {}
        differences = setting_differences(trained, configured) if configured is not None else []
        listing = [f"trained with {key}={command_line_value(was)}, configured {command_line_value(now)}"
                   for key, was, now in differences]
        raise CheckpointMismatchError(
            f"{mismatch_cause(path, trained, configured, differences)}. Differences: {state_dict_mismatch(error)} "
            "(every key in the run's log file)",
            details="\n".join([*listing, str(error)]),
        ) from error


def require_model_entry(checkpoint: dict[str, Any], path: str | Path) -> None:
    if "model" not in checkpoint:
        raise CheckpointError(f"{path} holds no 'model' entry; is it a checkpoint of this project?")


# model.* settings an evaluation chooses for itself (T, the output stride) or that only start
# a training (ImageNet weights, the weights fine-tuned from): a checkpoint trained with other
# values is not asked to be given them back. model.init_from is here rather than in
# SETTINGS_WITHOUT_TENSORS: it shapes no tensor, and a mismatch message must never name it.
EVALUATION_CHOICES = frozenset({
    "model.backbone.pretrained", "model.init_from", "model.backbone.eval_output_stride", "model.ema.eval_stages",
})
# model.* settings that never change the names or shapes of the model's tensors (checked for
# every one): named after those that do, which are the cause of a mismatch.
SETTINGS_WITHOUT_TENSORS = frozenset({
    "model.backbone.output_stride", "model.backbone.multi_grid", "model.bn_momentum", "model.align_corners",
    "model.dropout", "model.ema.train_stages", "model.ema.momentum", "model.ema.lambda_",
    "model.ema.normalize_bases", "model.ema.maintenance",
})
# Settings named in the one-line message; the error's details list every one.
SETTING_EXAMPLES = 4


def setting_differences(trained: dict, configured: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, trained value, configured value) for each ``model.*`` setting and
    ``dataset.num_classes`` that the checkpoint's recorded training config ``trained`` (resolved)
    has another value of than ``configured``, those that shape tensors first; keys either one
    lacks (another version's, another head's) and :data:`EVALUATION_CHOICES` are left out.
    Empty if the checkpoint records no model settings."""
    if not isinstance(trained.get("model"), dict):
        return []
    was = flattened({"model": trained["model"]})
    now = flattened({"model": OmegaConf.to_container(configured.model, resolve=True)})
    if "num_classes" in (trained.get("dataset") or {}):
        was["dataset.num_classes"] = trained["dataset"]["num_classes"]
        now["dataset.num_classes"] = OmegaConf.select(configured, "dataset.num_classes")
    differences = [
        (key, was[key], now[key])
        for key in was
        if key in now and was[key] != now[key] and key not in EVALUATION_CHOICES
    ]
    return sorted(differences, key=lambda difference: difference[0] in SETTINGS_WITHOUT_TENSORS)  # stable


def flattened(settings: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model.ema.num_bases": 64, ...}`` from nested dicts; lists stay values."""
    flat = {}
    for name, value in settings.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flattened(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def command_line_value(value: Any) -> str:
    """``value`` as a Hydra override takes it: null, true, [1,2,4]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(command_line_value(item) for item in value) + "]"
    return str(value)


def mismatch_cause(
    path: str | Path, trained: dict, configured: DictConfig | None, differences: list[tuple[str, Any, Any]]
) -> str:
    """The first part of a mismatch's message: what the checkpoint was trained with that the
    configured model is not, and what to pass. ``experiment=NAME`` is named as the fix only
    when it is not the configured experiment (or that is unknown)."""
    trained_with = trained.get("name")
    configured_name = OmegaConf.select(configured, "name") if configured is not None else None
    other_experiment = bool(trained_with) and trained_with != configured_name
    if differences:
        shown = differences[:SETTING_EXAMPLES]
        more = f" and {len(differences) - len(shown)} more" if len(differences) > len(shown) else ""
        was = "it was trained with " + ", ".join(f"{key}={command_line_value(value)}" for key, value, _ in shown)
        now = "configured: " + ", ".join(command_line_value(value) for _, _, value in shown) + (", ..." if more else "")
        if other_experiment:
            return (
                f"{path} was trained with experiment={trained_with} and does not fit the configured model: "
                f"pass experiment={trained_with} ({was}{more}; {now})"
            )
        return f"{path} does not fit the configured model: {was}{more} ({now}): pass those on the command line"
    if other_experiment:
        return (
            f"{path} was trained with experiment={trained_with} and does not fit the configured model: "
            f"pass experiment={trained_with} (and any model.* setting it was trained with)"
        )
    if trained_with and isinstance(trained.get("model"), dict):
        return (
            f"{path} does not fit the configured model although it was trained with its model.* settings "
            f"(experiment={trained_with}): was it written by another version of this project?"
        )
    if trained_with:
        return (
            f"{path} was trained with experiment={trained_with}, as configured, and does not fit the configured "
            "model: pass the model.* settings it was trained with (the checkpoint does not record them)"
        )
    return f"{path} does not fit the configured model: pass the experiment the checkpoint was trained with"


# A list of missing or unexpected keys is cut to its count and this many keys: a checkpoint
# of another architecture lists hundreds of them.
KEY_EXAMPLES = 3


def state_dict_mismatch(error: RuntimeError) -> str:
    """What ``load_state_dict`` found wrong (the lines after its "Error(s) in loading"
    heading) in a few hundred characters: each list of missing or unexpected keys as its
    count and first few keys, then the first other problem (a size mismatch) and how many
    more there are."""
    lines = str(error).splitlines()
    problems = [line.strip() for line in lines[1:] if line.strip()] or lines[:1]
    summaries = []
    others = []
    for problem in problems:
        key_list = re.match(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)", problem)
        if key_list:
            keys = re.findall(r'"([^"]+)"', key_list[2])
            examples = ", ".join(keys[:KEY_EXAMPLES]) + (", ..." if len(keys) > KEY_EXAMPLES else "")
            summaries.append(f"{len(keys)} {key_list[1].lower()} key{'s' if len(keys) != 1 else ''} ({examples})")
        else:
            others.append(problem.rstrip("."))
    if others:
        summaries.append(others[0] + (f"; and {len(others) - 1} more" if len(others) > 1 else ""))
    return "; ".join(summaries)


# The model.* settings that shape the backbone's tensors: those a checkpoint refused by
# model.init_from is told to have been trained with.
BACKBONE_SETTINGS = ("model.backbone.depth", "model.backbone.stem", "model.backbone.width")
# Tensors named in model.init_from's log line; the others are counted.
NEW_TENSOR_EXAMPLES = 8


def load_init_weights(model: nn.Module, path: str | Path, cfg: DictConfig, announce: bool = True) -> list[str]:
    """Start ``model`` (built from ``cfg``) from the weights of the checkpoint ``path``
    (``model.init_from``); returns the names of the model's tensors the checkpoint has no
    tensor of the same name and shape for, which keep their fresh initialisation.

    Fine-tuning on another dataset changes the classifiers' class count, and may change the
    head: those tensors are left out by shape, in one line (``announce``: this process logs
    it). The backbone must be taken whole: one of another depth, stem or width would leave
    the run training a fresh backbone under a head of trained weights, which fails quietly,
    as a poor score hours later, so it is refused naming the settings that differ. Only
    weights are taken: the optimizer, scheduler, RNG and iteration count start afresh.
    """
    checkpoint = load_checkpoint(path, setting="model.init_from")
    file = checkpoint_file(path)
    require_model_entry(checkpoint, file)
    own = model.state_dict()
    matched = {
        name: tensor for name, tensor in checkpoint["model"].items()
        if name in own and getattr(tensor, "shape", None) == own[name].shape
    }
    trained = checkpoint.get("config") or {}
    check_backbone_fits(own, checkpoint["model"], matched, file, trained, cfg)
    model.load_state_dict(matched, strict=False)
    new = [name for name in own if name not in matched]
    if announce:
        log.info("%s", init_summary(path, len(matched), len(own), new, trained, cfg))
    return new


def check_backbone_fits(
    own: dict[str, torch.Tensor], given: dict[str, Any], matched: dict[str, Any], file: Path, trained: dict,
    cfg: DictConfig,
) -> None:
    """Refuse a checkpoint that lacks a tensor of the same name and shape for any of the
    model's ``backbone.*`` tensors, or that has ``backbone.*`` tensors the model does not
    (a ResNet-101's for a ResNet-50, whose every tensor it also has), naming the backbone
    settings it was trained with."""
    backbone = [name for name in own if name.startswith("backbone.")]
    missing = [name for name in backbone if name not in matched]
    extra = [name for name in given if name.startswith("backbone.") and name not in own]
    if not missing and not extra:
        return
    differences = [difference for difference in setting_differences(trained, cfg) if difference[0] in BACKBONE_SETTINGS]
    if differences:
        was = ", ".join(f"{key}={command_line_value(value)}" for key, value, _ in differences)
        now = ", ".join(command_line_value(value) for _, _, value in differences)
        fix = f"it was trained with {was} (configured: {now}): pass those on the command line"
    else:
        configured = " ".join(f"{key}={command_line_value(OmegaConf.select(cfg, key))}" for key in BACKBONE_SETTINGS)
        fix = f"give model.init_from a checkpoint of the configured backbone ({configured})"
    found = f"{len(backbone) - len(missing)} of the {len(backbone)} backbone tensors match by name and shape"
    if extra:
        found += f", and it has {len(extra)} backbone tensors the configured model lacks"
    raise CheckpointMismatchError(
        f"{file} does not fit the configured backbone (model.init_from): {found}; {fix}",
        details="\n".join([
            "backbone tensors without a match: " + ", ".join(f"{name} {tuple(own[name].shape)}" for name in missing),
            "backbone tensors the configured model lacks: " + ", ".join(extra),
        ]),
    )


def init_summary(path: str | Path, loaded: int, total: int, new: list[str], trained: dict, cfg: DictConfig) -> str:
    """``init_from PATH: 412 of 416 tensors loaded; new: head.classifier.weight, ... (21 -> 4
    classes)``: the class counts only where they differ, the reason the classifiers are new."""
    line = f"init_from {path}: {loaded} of {total} tensors loaded"
    if new:
        shown = new[:NEW_TENSOR_EXAMPLES]
        more = f" and {len(new) - len(shown)} more" if len(new) > len(shown) else ""
        line += "; new: " + ", ".join(shown) + more
    was = (trained.get("dataset") or {}).get("num_classes")
    now = OmegaConf.select(cfg, "dataset.num_classes")
    if was is not None and was != now:
        line += f" ({was} -> {now} classes)"
    return line


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
    point_last_at(path)
    for old in sorted(directory.glob(CHECKPOINT_PATTERN))[:-keep]:
        old.unlink()
        digest_file(old).unlink(missing_ok=True)
    return path


def point_last_at(path: Path) -> None:
    """Make ``last.pt`` beside ``path`` the checkpoint ``path`` (a hard link), and
    ``last.pt.sha256`` its digest.

    The digest is a file of its own, written atomically, that names ``last.pt``: a hard link
    to ``path``'s digest would name ``path``, and ``sha256sum -c last.pt.sha256`` fails in a
    copy of ``last.pt`` and its digest alone. Readers in this folder check ``last.pt``
    against the digest of the ``iter_*.pt`` it is (:func:`digest_record`), so the moment
    between the link and the digest is no window for a false alarm.
    """
    last = path.parent / "last.pt"
    replace_with_link(path, last)
    if digest_file(path).is_file():
        # The digest recorded at the checkpoint's writing (or checked when resuming from it):
        # hashing a checkpoint of hundreds of MB again would cost seconds a save.
        digest = (digest_file(path).read_text().split() or [""])[0]
        # Renamed into place: never written through an earlier version's last.pt.sha256, a
        # hard link to an iter_*.pt's digest.
        atomic_write(digest_file(last), lambda temp: Path(temp).write_text(f"{digest}  {last.name}\n"))
    else:  # a checkpoint of an earlier version: no digest, and none of another file either
        digest_file(last).unlink(missing_ok=True)


def replace_with_link(source: Path, destination: Path) -> None:
    """Make ``destination`` a hard link to ``source`` (no second copy of a large file), atomically."""
    link = destination.with_name(f".{destination.name}.tmp")
    link.unlink(missing_ok=True)
    os.link(source, link)
    os.replace(link, destination)


def newest_intact_checkpoint(directory: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint of ``directory`` that reads and passes its digest check, and its
    state; (None, None) if there is none.

    Each newer one that does not (truncated, empty, damaged) is set aside with a one-line
    warning, so that a bad file never blocks resuming from an older intact one, and
    ``last.pt`` is pointed at the one returned.
    """
    for path in sorted(Path(directory).glob(CHECKPOINT_PATTERN), reverse=True):
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            log.warning("%s; set it aside as %s and fell back to the previous checkpoint", error, set_aside(path).name)
            continue
        point_last_at(path)
        return path, state
    return None, None


def set_aside(path: Path) -> Path:
    """Rename a bad checkpoint (and its digest) to ``<name>.corrupt``: kept for a look, no
    longer one of the run's checkpoints."""
    aside = path.with_name(path.name + ".corrupt")
    if digest_file(path).exists():
        os.replace(digest_file(path), digest_file(aside))
    os.replace(path, aside)
    return aside


def remove_leftovers(directory: Path) -> None:
    """Remove what checkpoint writes killed part-way left in ``directory``: temporary files,
    and digests whose checkpoint never took its name. Only for a directory whose run lock
    this process holds: another run's temporary files would be in use."""
    leftovers = [
        *Path(directory).glob(".*.tmp"),
        *(digest for digest in Path(directory).glob("iter_*.pt.sha256") if not digest.with_suffix("").exists()),
    ]
    for leftover in leftovers:
        leftover.unlink()
    if leftovers:
        log.info(
            "removed %d file(s) left by an interrupted checkpoint write: %s", len(leftovers),
            ", ".join(sorted(leftover.name for leftover in leftovers)),
        )

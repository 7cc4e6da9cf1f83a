"""Command-line overrides checked against the config schema before Hydra runs anything.

Hydra takes ``+schedule.iteratons=5`` (the fix its own message suggests for
``schedule.iteratons=5``) as a new key, which nothing reads: the run goes ahead with the
default it was meant to change. A key override that the schema
(:mod:`emanet.config_schema`) does not have, a value its rule refuses, and a config group
option that does not exist are refused here in one line naming the closest key, saying what
the key allows or listing the options, before Hydra composes the config or creates a run
directory (``train.py``, ``evaluate.py``, ``scripts/predict.py`` and the console scripts
call :func:`emanet.cli.refuse_unknown_overrides` first). ``hydra.*`` keys are Hydra's: it
checks them itself.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra import initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException

from emanet.config_checks import RULES, format_value, schema_keys
from emanet.config_schema import ADDED_KEYS
from emanet.errors import ConfigError
from emanet.renamed_keys import RENAMED_KEYS

# The command of each primary config, for the hint of the error message.
COMMANDS = {"train": "train.py", "evaluate": "evaluate.py", "predict": "scripts/predict.py"}

# Flags after which Hydra does not compose the job's config with the overrides (a help
# page, its own information, a version, a shell script), or composes it from other config
# folders than the project's: the overrides are left to Hydra.
UNCHECKED_FLAGS = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun", "config_path", "config_dir")


class _ArgumentError(Exception):
    pass


def check_command_line(config_name: str, argv: Sequence[str], config_dir: Path) -> None:
    """Raise :class:`ConfigError` for an override in ``argv`` (a Hydra app's command line,
    flags included) of a key no part of the config reads or of a group option that does
    not exist. A command line Hydra's own parser refuses, or one with a flag of
    :data:`UNCHECKED_FLAGS`, is left to Hydra."""
    if "--version" in argv:  # argparse's version action would print and exit here
        return
    parser = get_args_parser()  # Hydra's own: the same split of flags and overrides

    def refuse(message: str) -> None:
        raise _ArgumentError(message)

    parser.error = refuse  # type: ignore[method-assign]  # no usage print, no exit
    try:
        args = parser.parse_args(list(argv))
    except (_ArgumentError, argparse.ArgumentError):
        return
    if any(getattr(args, flag) for flag in UNCHECKED_FLAGS):
        return
    command = COMMANDS.get(config_name, config_name)
    if args.config_name:
        command, config_name = f"{command} --config-name={args.config_name}", args.config_name
    check_overrides(config_name, args.overrides, config_dir, command)


def check_overrides(config_name: str, overrides: Sequence[str], config_dir: Path, command: str | None = None) -> None:
    """Raise :class:`ConfigError` naming every override of ``overrides`` (Hydra's syntax,
    sweeps included) that sets, adds or deletes a key the schema of ``config_name`` does
    not have (and :data:`ADDED_KEYS` does not allow), that gives a key a value its rule
    refuses, or that chooses an option its group does not have. Overrides Hydra cannot
    parse are left to Hydra, which says why. ``command`` (``train.py``) is named in the
    message."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return
    if not any(not override.is_hydra_override() or "/" in override.key_or_group for override in parsed):
        return  # only hydra.* keys: no need to start Hydra's config repository
    with hydra_session(config_dir):
        loader = GlobalHydra.instance().config_loader()
        repository = loader.repository  # type: ignore[attr-defined]  # ConfigLoaderImpl's
        groups = [o for o in parsed if repository.group_exists(o.key_or_group) and not isinstance(o.value(), dict)]
        problems = [problem for override in groups for problem in option_problems(override, loader)]
    if problems:
        raise ConfigError("; ".join(problems))
    keys = schema_keys(config_name)
    settings = [o for o in parsed if o not in groups and not o.is_hydra_override() and o.package is None]
    unknown = [o for o in settings if o.key_or_group not in keys
               and not (allowed_key(o.key_or_group) and (o.is_add() or o.is_force_add()))]
    if unknown:
        command = " ".join([command or COMMANDS.get(config_name, config_name),
                            *(o.input_line for o in groups if not o.is_sweep_override())])
        raise ConfigError("; ".join(unknown_key_message(o, sorted(keys)) for o in unknown)
                          + f" (python {command} --cfg job lists every setting)")
    problems = [problem for override in settings if override.key_or_group in RULES
                for problem in value_problems(override)]
    if problems:
        raise ConfigError("; ".join(problems))


def value_problems(override: Override) -> Iterator[str]:
    """``key=value: expected ...`` for each value of ``override`` (one, or a sweep's) that
    the key's rule refuses; values that interpolate other keys are checked once composed."""
    if override.is_delete():
        return
    if override.is_sweep_override():
        try:
            values = list(override.sweep_iterator())
        except HydraException:  # an interval sweep, or a glob: Hydra says what it allows
            return
    else:
        values = [override.value()]
    rule = RULES[override.key_or_group]
    for value in values:
        if isinstance(value, str) and "${" in value:
            continue
        if not rule.allows(value):
            yield f"{override.key_or_group}={format_value(value)}: expected {rule.describe()}"


@contextmanager
def hydra_session(config_dir: Path) -> Iterator[None]:
    """Hydra set up on the project's configs (or the running app's, when there is one)."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        yield


def option_problems(override: Override, loader) -> Iterator[str]:
    """``group=option`` for each option of a group override its group does not have, with
    the options it has."""
    if override.is_delete():
        return  # ~group, ~group=option: Hydra checks that the option is the chosen one
    group = override.key_or_group
    for option in override_values(override, loader):
        if loader.repository.config_exists(f"{group}/{option}"):
            continue
        options = [name for name in loader.get_group_options(group, results_filter=ObjectType.CONFIG)
                   if not name.startswith("_")]  # _common, _backbone: parts of the others
        close = difflib.get_close_matches(option, options, n=1)
        guess = f"did you mean {close[0]}? The" if close else "the"
        yield f"{group}={option} is not an option of {group}: {guess} options are {', '.join(options)}"


def override_values(override: Override, loader) -> list[str]:
    """The options a group override chooses: one, a list, or a sweep's values (a glob
    matches only options that exist)."""
    value = override.value()
    if isinstance(value, Glob):
        return value.filter(loader.get_group_options(override.key_or_group, results_filter=ObjectType.CONFIG))
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except HydraException:  # an interval sweep: no options at all, Hydra says so
            return []
    return [str(option) for option in value] if isinstance(value, list) else [str(value)]


def allowed_key(key: str) -> bool:
    return any(key == added or key.startswith(f"{added}.") for added in ADDED_KEYS)


def unknown_key_message(override: Override, known: Sequence[str]) -> str:
    key = override.key_or_group
    if key in RENAMED_KEYS:
        return f"{key} is now called {RENAMED_KEYS[key]}: set {RENAMED_KEYS[key]}=..."
    if allowed_key(key):
        return f"{key} is not in the config: add it with +{key}=..."
    close = closest_key(key, known)
    guess = f": did you mean {close}?" if close else ""
    return f"{key} is not a setting{guess}"


def closest_key(key: str, known: Sequence[str]) -> str | None:
    """The known key closest to ``key``: by the whole dotted path, else by the last part
    (``lr`` -> ``optim.lr``)."""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return close[0]
    by_leaf: dict[str, list[str]] = {}
    for path in known:
        by_leaf.setdefault(path.rpartition(".")[2], []).append(path)
    leaf = difflib.get_close_matches(key.rpartition(".")[2], list(by_leaf), n=1)
    return difflib.get_close_matches(key, by_leaf[leaf[0]], n=1, cutoff=0)[0] if leaf else None

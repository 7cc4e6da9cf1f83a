"""Command-line overrides checked against the config before Hydra runs anything.

Hydra takes ``+schedule.iteratons=5`` (the fix its own message suggests for
``schedule.iteratons=5``) as a new key, which nothing reads: the run goes ahead with the
default it was meant to change. A key override that no part of the composed config has,
and a config group option that does not exist, are refused here in one line naming the
closest key or listing the options, before Hydra composes the config or creates a run
directory (``train.py``, ``evaluate.py`` and ``scripts/predict.py`` call
:func:`emanet.cli.refuse_unknown_overrides` first).

The known keys are those of the config composed with the user's group choices (an
experiment declares keys of its own) and none of the key overrides (one of them may be
the typo). ``hydra.*`` keys are Hydra's: it checks them itself.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from emanet.errors import ConfigError

# Keys the code reads although no config file declares them: adding them (+KEY=...) is
# allowed, and so is adding any key under them. Each names the file that reads it, and a
# test checks that the file does.
ADDED_KEYS = {
    # scripts/reproduce_paper.py runs the iteration table's evaluations as one multirun over
    # +iteration_cell={train:T,eval:T_eval}, one value per (T, T_eval) pair (a sweep over the
    # two stage keys would be their full product), and interpolates checkpoint,
    # model.ema.train_stages and model.ema.eval_stages from ${iteration_cell.train/eval}
    # (emanet.reproduce.iteration_runs).
    "iteration_cell": "emanet/reproduce.py",
}

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
    sweeps included) that sets, adds or deletes a key the config of ``config_name`` composed
    with the group choices of ``overrides`` does not have (and :data:`ADDED_KEYS` does not
    allow), or that chooses an option its group does not have. Overrides Hydra cannot parse
    are left to Hydra, which says why. ``command`` (``train.py``) is named in the message."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return
    if not any(not override.is_hydra_override() or "/" in override.key_or_group for override in parsed):
        return  # only hydra.* keys: no need to start Hydra's config repository
    with hydra_session(config_dir):
        loader = GlobalHydra.instance().config_loader()
        repository = loader.repository  # type: ignore[attr-defined]  # ConfigLoaderImpl's
        groups, keys = [], []
        for override in parsed:
            if repository.group_exists(override.key_or_group) and not isinstance(override.value(), dict):
                groups.append(override)
            elif not override.is_hydra_override() and override.package is None:
                keys.append(override)
        problems = [problem for override in groups for problem in option_problems(override, loader)]
        if problems:
            raise ConfigError("; ".join(problems))
        # An allowed key is looked up only when changed or deleted: Hydra can add it, not change it.
        unknown = [o for o in keys if not (allowed_key(o.key_or_group) and (o.is_add() or o.is_force_add()))]
        if unknown:  # composing costs 0.2-0.4 s: most keys are found in the files alone
            certain = certain_keys(config_name, groups, config_dir)
            unknown = [o for o in unknown if o.key_or_group not in certain]
        if any(o.is_force_add() for o in unknown):
            # ++KEY=VALUE sets KEY where the config has it and adds it where not: one set of
            # overrides for configs with different keys (reproduce_paper's smoke run narrows
            # every head with ++model.psa.channels=..., ++model.aspp.channels=...). Such a
            # key is refused only when no config file declares it.
            declared = declared_keys(config_dir)
            unknown = [o for o in unknown if not (o.is_force_add() and o.key_or_group in declared)]
        if not unknown:
            return
        known: set[str] = set()
        for choices in group_choices([o for o in groups if not o.is_hydra_override()], loader):
            try:
                cfg = OmegaConf.to_container(compose(config_name, choices), resolve=False)
            except (HydraException, OmegaConfBaseException):
                return  # a group choice Hydra refuses (+experiment=demo twice): Hydra says why
            unknown = [o for o in unknown if not has_key(cfg, o.key_or_group)]
            known.update(key_paths(cfg))
            if not unknown:
                return
    command = " ".join([command or COMMANDS.get(config_name, config_name),
                        *(o.input_line for o in groups if not o.is_sweep_override())])
    raise ConfigError("; ".join(unknown_key_message(o, sorted(known)) for o in unknown)
                      + f" (python {command} --cfg job lists every setting)")


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


def group_choices(groups: Sequence[Override], loader) -> Iterator[list[str]]:
    """Group overrides without sweeps to compose with: each sweep at its first value, then
    each other value of one sweep at a time (a key declared by one experiment of a sweep is
    known; the product of several sweeps is not composed)."""
    texts = [[f"{o.get_key_element()}={value}" for value in override_values(o, loader)]
             if o.is_sweep_override() else [o.input_line] for o in groups]
    texts = [choices for choices in texts if choices]  # a glob that matches nothing: Hydra says so
    first = [choices[0] for choices in texts]
    yield first
    for index, choices in enumerate(texts):
        for choice in choices[1:]:
            yield [*first[:index], choice, *first[index + 1:]]


def declared_keys(config_dir: Path) -> set[str]:
    """The dotted path of every key any config file under ``config_dir`` declares, where its
    package puts it (``# @package _global_``: at the top; otherwise under its group), the
    defaults lists and Hydra's own configs left out."""
    declared: set[str] = set()
    for path in config_dir.rglob("*.yaml"):
        if path.relative_to(config_dir).parts[0] != "hydra":
            declared |= read_config(path, config_dir)[0]
    return declared


def certain_keys(config_name: str, groups: Sequence[Override], config_dir: Path) -> set[str]:
    """Keys that the config ``config_name`` composed with the group overrides ``groups``
    certainly has, read from the config files without composing: those of the primary
    configs, and for each group of their defaults lists those that every option the group
    may end up with has. Merging configs only adds keys, so each of these is in the composed
    config; a key not among them may be too, and is looked up there.

    A group ends up with the command line's option, else with the primary config's or one
    that a config in the composition overrides it with (``override /model: deeplabv3`` in
    an experiment; that config's own group then counts with the command line's or the
    primary config's option, or with any option if a config overrides it too). A group the
    command line deletes (``~model``), or that a config may remove (``override /model:
    null``), counts for nothing."""
    if any(override.package for override in groups):
        return set()  # dataset@other=...: a group's keys moved elsewhere; left to composing
    chosen: dict[str, str | None] = {}  # the command line's option; None: several; "~": none
    for override in groups:
        value = override.value()
        if override.is_delete():
            chosen[override.key_or_group] = "~"
        elif override.is_sweep_override() or override.is_add() or not isinstance(value, str):
            chosen[override.key_or_group] = None
        else:
            chosen[override.key_or_group] = value
    keys, defaults = primary_keys(config_name, config_dir)
    # Options named _* are parts of the others (_common, _backbone), never chosen
    # (tests/test_config_keys.py checks these keys against every experiment's config).
    every = {group: [path for path in sorted((config_dir / group).glob("*.yaml")) if not path.name.startswith("_")]
             for group in defaults}
    overridden = {target for paths in every.values() for path in paths for target in read_config(path, config_dir)[1]}

    def options(group: str, choice: str | None) -> list[Path]:
        return [] if choice == "~" else [config_dir / group / f"{choice}.yaml"] if choice else every[group]

    # The options each group may have before other configs' overrides: all of them where
    # those could change it.
    possible = {group: options(group, chosen.get(group, None if group in overridden else default))
                for group, default in defaults.items()}
    for group, default in defaults.items():
        if group in chosen:
            candidates = possible[group]
        else:
            # The options the possible configs override the group with, and the primary
            # config's unless one group's possible configs all override it
            overrides = [[read_config(path, config_dir)[1].get(group) for path in paths if path.is_file()]
                         for paths in possible.values()]
            named = {option for options in overrides for given in options if given for option in given}
            if all(None in options for options in overrides if options):
                named.add(default)
            if None in named:
                continue
            candidates = [config_dir / group / f"{option}.yaml" for option in sorted(named)]
        if not candidates or not all(path.is_file() for path in candidates):
            continue  # deleted, or an option of Hydra's or a plugin's: nothing known here
        keys |= frozenset.intersection(*(read_config(path, config_dir)[0] for path in candidates))
    return keys


def primary_keys(config_name: str, config_dir: Path) -> tuple[set[str], dict[str, str | None]]:
    """The keys of the primary config ``config_name`` and of the primary configs its
    defaults list includes (evaluate includes train), and the groups of their defaults
    lists with their options."""
    path = config_dir / f"{config_name}.yaml"
    if not path.is_file():
        return set(), {}
    keys: set[str] = set(read_config(path, config_dir)[0])
    groups: dict[str, str | None] = {}
    for entry in load_yaml(path).get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            included, included_groups = primary_keys(entry, config_dir)
            keys |= included
            groups.update(included_groups)
        elif isinstance(entry, dict):
            groups.update({str(group): option for group, option in entry.items()
                           if not str(group).startswith("override ")})
    return {key for key in keys if key.split(".")[0] != "hydra"}, groups


@functools.cache  # experiments include the same few files again and again
def read_config(path: Path, config_dir: Path) -> tuple[frozenset[str], dict[str, frozenset[str | None]]]:
    """The keys the config file ``path`` declares, at the dotted paths its package puts them
    (``# @package _global_``: at the top; by default under its group), with those of the
    configs of its own group its defaults list includes (``- _common``); and the options
    the overrides of their defaults lists give each group they override (``override /model:
    psanet``; None for ``null``, which removes the group). A config's own override wins over
    those of the configs it includes (voc_psanet's psanet over voc_emanet512's emanet), as
    Hydra takes them: several from included configs are all kept."""
    group = path.parent.relative_to(config_dir).as_posix()
    group = "" if group == "." else group
    text = path.read_text()
    header = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
    package = re.sub(r"^_group_", group.replace("/", "."), header.group(1) if header else "_group_")
    package = re.sub(r"^_global_\.?", "", package)
    content = load_yaml(path)
    defaults = content.pop("defaults", None) or []
    keys = {f"{package}.{key}" if package else key for key in key_paths(content)}
    keys |= {".".join(package.split(".")[:end]) for end in range(1, package.count(".") + 2) if package}
    own: dict[str, frozenset[str | None]] = {}
    included: dict[str, frozenset[str | None]] = {}
    for entry in defaults:
        if isinstance(entry, str) and entry != "_self_" and not entry.startswith("/") and group:
            path_included = path.parent / f"{entry}.yaml"
            if path_included.is_file():
                more_keys, more_overrides = read_config(path_included, config_dir)
                keys |= more_keys
                for target, options in more_overrides.items():
                    included[target] = included.get(target, frozenset()) | options
        elif isinstance(entry, dict):
            for key, option in entry.items():
                target = str(key).removeprefix("override ").strip()
                # an absolute group (/model), or one relative to the config's own group
                target = target[1:] if target.startswith("/") or not group else f"{group}/{target}"
                own[target] = own.get(target, frozenset()) | {None if option is None else str(option)}
    return frozenset(keys), {**included, **own}


def load_yaml(path: Path) -> dict:
    # libyaml's loader where PyYAML has it: ten times faster than the Python one
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def allowed_key(key: str) -> bool:
    return any(key == added or key.startswith(f"{added}.") for added in ADDED_KEYS)


def has_key(cfg: object, key: str) -> bool:
    """Whether the dotted ``key`` (list items by index) is in the container ``cfg``."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def key_paths(cfg: object, prefix: str = "") -> Iterator[str]:
    """The dotted path of every key of the container ``cfg``, inner nodes included."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from key_paths(value, path)


def unknown_key_message(override: Override, known: Sequence[str]) -> str:
    key = override.key_or_group
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

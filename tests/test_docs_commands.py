"""Every command that README.md and docs/*.md show in a code block runs as shown: its
overrides name keys and options that exist and compose into a config that passes the
startup check, the flags it gives a script exist, and every link between the pages lands
on a file and a heading."""

import contextlib
import functools
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import code_blocks
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

from emanet import export
from emanet.cli import CONFIG_DIR, compose_config
from emanet.config_keys import check_command_line

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The pages whose links this project writes by hand (docs/benchmarks.md is generated).
LINKING_PAGES = [page for page in PAGES if page.name != "benchmarks.md"] + [REPO / "data" / "README.md"]

# The Hydra entry points and the primary config each composes.
HYDRA_ENTRY_POINTS = {
    "train.py": "train", "evaluate.py": "evaluate", "scripts/predict.py": "predict",
    "emanet-train": "train", "emanet-evaluate": "evaluate", "emanet-predict": "predict",
}
# Scripts that take config overrides beside their flags, and the config those compose
# (each script's --help names it).
SCRIPT_CONFIGS = {
    "scripts/iteration_table.py": "train", "scripts/reproduce_paper.py": "train",
    "scripts/visualize_bases.py": "evaluate",
}
# Scripts that take key=value settings of their own rather than config overrides, and the keys.
KEY_VALUE_SCRIPTS = {"scripts/export.py": export.KEYS}
# The words a page's command line starts with.
LAUNCHERS = {"python", "torchrun", "srun", "docker", *HYDRA_ENTRY_POINTS}
OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w./@-]*=")


@dataclass(frozen=True)
class Command:
    where: str  # page and the command's own text, for the failure message
    entry: str  # train.py, scripts/predict.py, emanet-train, ...
    arguments: tuple[str, ...]

    @property
    def config_name(self) -> str | None:
        return HYDRA_ENTRY_POINTS.get(self.entry) or SCRIPT_CONFIGS.get(self.entry)

    @property
    def overrides(self) -> list[str]:
        if self.entry in HYDRA_ENTRY_POINTS:
            return get_args_parser().parse_args(list(self.arguments)).overrides
        return [word for word in self.arguments if OVERRIDE.match(word)]


def shell_words(line: str) -> list[str]:
    """The words the shell would pass on: placeholders (``<date>``) and variables
    (``${SLURM_JOB_ID}``) stand for a value, and ``...`` (more arguments) is left out."""
    line = re.sub(r"<([\w ,.-]+)>", lambda match: match.group(1).replace(" ", "_"), line)
    line = re.sub(r"\$\{?(\w+)\}?", "4242", line)
    return [word for word in shlex.split(line) if word != "..."]


def entry_point(word: str) -> bool:
    return word in HYDRA_ENTRY_POINTS or (word.startswith("scripts/") and word.endswith(".py"))


def page_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        for block in code_blocks(page.read_text()):
            for line in block:
                for part in line.split("&&"):
                    if part.split()[:1] not in [[launcher] for launcher in LAUNCHERS] or "python -c" in part:
                        continue  # not an entry point: output, an error message, inline code
                    words = shell_words(part)
                    position = next((i for i, word in enumerate(words) if entry_point(word)), None)
                    if position is not None:
                        where = f"{page.relative_to(REPO)}: {part.strip()}"
                        commands.append(Command(where, words[position], tuple(words[position + 1:])))
    return commands


COMMANDS = page_commands()
# The commands that compose a config (a script without overrides composes none), each once.
CONFIGURED = list({(command.config_name, command.arguments): command for command in COMMANDS
                   if command.entry in HYDRA_ENTRY_POINTS or (command.config_name and command.overrides)}.values())


def first_values(overrides: list[str]) -> list[str]:
    """A sweep's first run: each swept key at its first value."""
    parser = OverridesParser.create()
    firsts = []
    for override in overrides:
        parsed = parser.parse_override(override)
        if parsed.is_sweep_override():
            override = f"{parsed.get_key_element()}={next(parsed.sweep_string_iterator())}"
        firsts.append(override)
    return firsts


def test_the_pages_show_the_commands_people_use_most():
    readme = [command for command in COMMANDS if command.where.startswith("README.md")]
    assert {command.entry for command in readme} >= {
        "train.py", "evaluate.py", "scripts/predict.py", "scripts/reproduce_paper.py",
    }
    shown = {" ".join([command.entry, *command.arguments]) for command in readme}
    assert "train.py -m experiment=voc_r50_ablation model.ema.train_stages=1,2,3" in shown
    assert "evaluate.py checkpoint=runs/voc_emanet512/date eval=ms_flip" in shown
    # Every page with a code block of commands is read, the cluster page's torchrun lines too.
    assert {command.where.split(":")[0] for command in COMMANDS} >= {
        "README.md", "docs/training_and_evaluation.md", "docs/clusters.md", "docs/models.md",
        "docs/paper_tables.md", "docs/configuration.md", "docs/datasets.md",
    }
    assert any(command.where.startswith("docs/clusters.md: torchrun") for command in COMMANDS)
    assert len(CONFIGURED) >= 35


def test_a_placeholder_a_variable_and_an_elision_become_what_the_shell_would_pass():
    assert shell_words("srun python train.py hydra.run.dir=runs/voc512_${SLURM_JOB_ID} ...  ") == [
        "srun", "python", "train.py", "hydra.run.dir=runs/voc512_4242",
    ]
    assert shell_words("python evaluate.py checkpoint=runs/demo/<date>") == [
        "python", "evaluate.py", "checkpoint=runs/demo/date",
    ]
    assert first_values(["experiment=a,b", "input=[a.jpg,b.png]", "+x=1,2"]) == [
        "experiment=a", "input=[a.jpg,b.png]", "+x=1",
    ]


@pytest.mark.parametrize("command", CONFIGURED, ids=[command.where for command in CONFIGURED])
def test_every_command_names_keys_and_options_that_exist(command):
    # What the entry points refuse before Hydra starts (a typo in a key or an option).
    check_command_line(command.config_name, [*command.arguments] if command.entry in HYDRA_ENTRY_POINTS
                       else command.overrides, CONFIG_DIR)


@pytest.mark.slow
@pytest.mark.parametrize("command", CONFIGURED, ids=[command.where for command in CONFIGURED])
def test_every_command_composes_into_a_config_that_passes_the_startup_check(command, tmp_path):
    overrides = first_values(command.overrides)
    if any(override.startswith("dataset.root=") for override in overrides):
        # A dataset of one's own (dataset=folder) reads its classes from ROOT/classes.txt.
        (tmp_path / "classes.txt").write_text("background\nleaf\n")
        overrides = [f"dataset.root={tmp_path}" if override.startswith("dataset.root=") else override
                     for override in overrides]
    cfg = compose_config(command.config_name, overrides, return_hydra_config=True)
    assert cfg.name


@functools.cache
def script_help(script: str, *arguments: str) -> str:
    """``python SCRIPT ARGUMENTS --help``'s page, run in this process (the package is imported
    already: a fresh interpreter would spend seconds importing torch for each page)."""
    page, argv = io.StringIO(), sys.argv
    sys.argv = [script, *arguments, "--help"]
    try:
        with contextlib.redirect_stdout(page), pytest.raises(SystemExit) as exited:
            runpy.run_path(str(REPO / script), run_name="__main__")
    finally:
        sys.argv = argv
    assert exited.value.code in (0, None), page.getvalue()
    return page.getvalue()


SCRIPTS = sorted({command.entry for command in COMMANDS if command.entry not in HYDRA_ENTRY_POINTS})


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_given_to_a_script_is_one_it_takes(script):
    # Each --help runs once (a second or more each): the pages give some scripts many commands.
    unknown = []
    for command in [command for command in COMMANDS if command.entry == script]:
        page = script_help(script)
        subcommands = re.search(r"\{([\w,-]+)\}", page.split("\n\n")[0])
        if subcommands and command.arguments and command.arguments[0] in subcommands.group(1).split(","):
            page += script_help(script, command.arguments[0])
        flags = [word.split("=")[0] for word in command.arguments if word.startswith("--")]
        unknown += [f"{command.where}: {flag}" for flag in flags
                    if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", page)]
        if command.entry in KEY_VALUE_SCRIPTS:
            unknown += [f"{command.where}: {word}" for word in command.overrides
                        if word.split("=")[0] not in KEY_VALUE_SCRIPTS[command.entry]]
        elif command.overrides:
            assert command.config_name, f"{command.where}: add the config its overrides compose to SCRIPT_CONFIGS"
    assert unknown == []


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_pages_lands_on_a_file_and_a_heading():
    broken = []
    for page in LINKING_PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []

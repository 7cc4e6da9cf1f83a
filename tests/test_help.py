"""`--help` of the entry points: a short page a person reads, not the config dump. Checked in
this process: the Hydra applications called as their console scripts call them, the
argparse scripts run as `python script --help` runs them."""

import logging
import runpy
import string
import sys
from functools import partial

import pytest
from hydra import compose, initialize_config_dir
from tests_paths import CONFIGS, REPO

from emanet.entry_points import evaluate_main, predict_main, train_main

EVAL_PRESETS = ["ms_flip", "ss", "ms_flip_slide", "ss_slide", "release_ss"]
# Each Hydra application, by the name its page gives it: its main and its primary config.
APPLICATIONS = {
    "train.py": (train_main, "train"),
    "evaluate.py": (evaluate_main, "evaluate"),
    "scripts/predict.py": (predict_main, "predict"),
}
ARGPARSE_SCRIPTS = sorted(
    path.relative_to(REPO).as_posix() for path in (REPO / "scripts").glob("*.py") if "argparse" in path.read_text()
)


@pytest.fixture
def root_logging():
    """Hydra configures the root logger for the application it runs: put it back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def printed_with_argv(main, argv: list[str], monkeypatch, capsys) -> str:
    """What ``main`` prints run with the command line ``argv``; it must exit with status 0."""
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    return capsys.readouterr().out


def rendered_help(config_name: str) -> str:
    """The page of ``config_name``'s hydra/help config: its template, which uses none of the
    $-fields Hydra fills in (flags, config groups, the config), resolved."""
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    return string.Template(cfg.hydra.help.template).substitute()


@pytest.mark.parametrize("script", sorted(APPLICATIONS))
def test_help_lists_the_experiments_and_presets_in_a_page_without_internal_groups(script):
    page = rendered_help(APPLICATIONS[script][1])
    assert len(page.splitlines()) < 60, page
    words = set(page.replace(",", " ").split())
    experiments = sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml"))
    assert [name for name in experiments if name not in words] == []
    assert [name for name in EVAL_PRESETS if name not in words] == []
    assert "--cfg job" in page
    assert "_common" not in page and "_backbone" not in page
    assert f"python {script} " in page  # its usage line


@pytest.mark.slow  # Hydra lists every config group's options to fill in its template: over a second
@pytest.mark.parametrize("script", sorted(APPLICATIONS))
def test_the_application_prints_that_page_for_help(script, monkeypatch, capsys, root_logging):
    main, config_name = APPLICATIONS[script]
    assert printed_with_argv(main, [script, "--help"], monkeypatch, capsys) == rendered_help(config_name) + "\n"


@pytest.mark.parametrize("script", ARGPARSE_SCRIPTS)
def test_argparse_scripts_describe_themselves(script, monkeypatch, capsys):
    path_before = list(sys.path)
    run_script = partial(runpy.run_path, str(REPO / script), run_name="__main__")
    usage, _, rest = printed_with_argv(run_script, [script, "--help"], monkeypatch, capsys).partition("\n\n")
    description = rest.partition("\n\n")[0]
    assert usage.startswith("usage:") and description and not description.startswith(("positional", "options")), (
        usage + rest
    )
    assert sys.path == path_before  # scripts import the package, never their neighbours

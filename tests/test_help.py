"""`--help` of the Hydra entry points: a short page a person reads, not the config dump."""

import os
import subprocess
import sys

import pytest
from tests_paths import REPO

EVAL_PRESETS = ["ms_flip", "ss", "ms_flip_slide", "ss_slide", "release_ss"]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "scripts/predict.py"])
def test_help_lists_the_experiments_and_presets_in_a_page_without_internal_groups(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert len(page.splitlines()) < 60, page
    words = set(page.replace(",", " ").split())
    experiments = sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml"))
    assert [name for name in experiments if name not in words] == []
    assert [name for name in EVAL_PRESETS if name not in words] == []
    assert "--cfg job" in page
    assert "_common" not in page and "_backbone" not in page
    assert f"python {script} " in page  # its usage line


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(
    path.relative_to(REPO).as_posix() for path in (REPO / "scripts").glob("*.py") if "argparse" in path.read_text()
))
def test_argparse_scripts_describe_themselves(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    usage, _, rest = result.stdout.partition("\n\n")
    description = rest.partition("\n\n")[0]
    assert usage.startswith("usage:") and description and not description.startswith(("positional", "options")), (
        result.stdout
    )

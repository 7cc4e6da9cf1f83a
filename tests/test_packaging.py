"""The files an install and the Docker image need (docker itself cannot run in the test suite)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def docker_copies() -> list[tuple[int, list[str]]]:
    """(line number, sources) of each COPY instruction of the Dockerfile."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    return [(number, line.split()[1:-1]) for number, line in enumerate(lines) if line.startswith("COPY ")]


def test_the_image_copies_what_the_install_and_the_scripts_read_before_they_run():
    lines = (REPO / "Dockerfile").read_text().splitlines()
    install = next(number for number, line in enumerate(lines) if "pip install" in line)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    before_install = {source for number, sources in docker_copies() if number < install for source in sources}
    # The build reads the readme and the license files; the package itself is installed editable.
    assert {"pyproject.toml", project["readme"], *project["license-files"], "emanet"} <= before_install
    everything = {source for _, sources in docker_copies() for source in sources}
    assert {"configs", "scripts", "docs", "train.py", "evaluate.py"} <= everything
    for source in everything:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"

"""What the README tells a new user to run, and the Docker image it describes (docker
itself cannot run in the test suite)."""

import shlex
from pathlib import Path, PurePosixPath

from helpers import code_blocks

from emanet.cli import compose_config

REPO = Path(__file__).resolve().parents[1]
CPU_TORCH = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [tuple(line.split(maxsplit=1)) for line in lines]


def test_quickstart_keeps_its_two_commands_and_gives_the_cpu_install_and_the_thread_setting():
    quickstart = readme_section("Quickstart")
    blocks = code_blocks(quickstart)
    assert blocks[0] == ['pip install -e ".[dev]" && python train.py', "pytest"]
    cpu_block = next(block for block in blocks if CPU_TORCH in block)
    # The CPU build of torch first: the project's install then keeps it instead of pulling CUDA's.
    assert cpu_block.index(CPU_TORCH) < next(i for i, line in enumerate(cpu_block) if 'pip install -e ".[dev]"' in line)
    assert "runtime.threads=" in quickstart


def test_dockerignore_keeps_runs_data_history_and_caches_out_of_the_build_context():
    patterns = {line for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")}
    assert {".git", "runs/", "data/", "**/__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/"} <= patterns


def test_the_demo_in_the_image_writes_its_dataset_into_the_container_and_datasets_are_mounted_read_only(
    monkeypatch,
):
    instructions = dockerfile_instructions()
    workdir = PurePosixPath(next(value for name, value in instructions if name == "WORKDIR"))
    environment = dict(
        shlex.split(assignment)[0].split("=", 1)
        for name, value in instructions if name == "ENV" for assignment in value.split()
    )
    assert next(value for name, value in instructions if name == "CMD") == '["python", "train.py"]'  # the demo
    if "EMANET_DATA_ROOT" in environment:
        monkeypatch.setenv("EMANET_DATA_ROOT", environment["EMANET_DATA_ROOT"])
    else:
        monkeypatch.delenv("EMANET_DATA_ROOT", raising=False)
    data_root = workdir / compose_config("train", []).data_root  # relative roots are taken from WORKDIR
    runs = [shlex.split(line) for line in code_blocks(readme_section("Docker"))[0] if line.startswith("docker run")]
    assert runs
    for command in runs:
        mounts = [command[i + 1].split(":") for i, word in enumerate(command) if word == "-v"]
        for host, container, *mode in mounts:
            assert not data_root.is_relative_to(container), f"the demo would write into the mounted {host}"
            if container != str(workdir / "runs"):
                assert mode == ["ro"], f"{host} is mounted writable"


def test_the_tests_run_in_the_image():
    instructions = dockerfile_instructions()
    install = next(value for name, value in instructions if name == "RUN" and "pip install" in value)
    assert '".[dev]"' in install  # pytest
    copied = {source for name, value in instructions if name == "COPY" for source in value.split()[:-1]}
    assert "tests" in copied
    # Files the tests read from the repository root come along.
    assert {"Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "configs", "scripts"} <= copied
    assert any(line.startswith("docker run") and line.split()[-1] == "pytest"
               for line in code_blocks(readme_section("Docker"))[0])

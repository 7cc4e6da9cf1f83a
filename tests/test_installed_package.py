"""The package installed from its wheel (not the editable checkout) runs from any folder.

The wheel must carry the configs, and the console scripts must find them there and write
their runs and the demo's data under the folder they are started in, never into the
checkout. The new environment sees the dependencies already installed here through a
``.pth`` file (nothing is downloaded), but not the editable install of the checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import write_demo_run, write_photo
from tests_paths import REPO

pytestmark = pytest.mark.slow

TINY_DEMO = [
    "schedule.iterations=2",
    "schedule.batch_size=2",
    "schedule.log_every=1",
    "schedule.checkpoint_every=2",
    "dataset.generate.num_train=4",
    "dataset.generate.num_val=2",
    "eval.scales=[1.0]",  # single scale
    "eval.flip=false",
    "runtime.threads=1",
    "runtime.num_workers=0",
    "runtime.progress=false",
]


def checkout_files() -> dict[str, int]:
    """Each file of the checkout, but its sources (``.py``, ``.md``, which no run writes), with
    its modification time: the outputs a run, the demo or a build could leave there
    (``runs/``, ``data/demo``, ``.hydra/``, ``build/``, ``*.egg-info``) show up as changes."""
    skipped = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    files = {}
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in skipped]
        for name in names:
            path = Path(folder, name)
            if path.suffix not in (".py", ".md") and path.is_file():
                files[str(path.relative_to(REPO))] = path.stat().st_mtime_ns
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the new environment's bin folder, its environment variables), with the wheel installed."""
    tmp = tmp_path_factory.mktemp("installed")
    # The wheel is built from a copy: an in-tree build writes build/ and *.egg-info into the checkout.
    source = tmp / "source"
    for package in ("emanet", "hydra_plugins"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--quiet", str(source), "-w", str(tmp / "wheels")],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp / "wheels").glob("emanet-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )
    # Listed in a .pth file, a folder joins sys.path but its own .pth files are not run:
    # the editable install's finder stays out.
    dependencies = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_packages / "dependencies_of_the_tests.pth").write_text("".join(f"{path}\n" for path in dependencies))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "EMANET_DATA_ROOT")}
    # pip itself comes from the .pth's folders and installs into the interpreter it runs in.
    subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "install", "--no-deps", "--quiet",
         str(wheel)],
        check=True, capture_output=True, env=env,
    )
    return venv / "bin", env


def test_the_wheel_carries_every_config(installed):
    bin_folder, env = installed
    located = subprocess.run(
        [bin_folder / "python", "-c", "import emanet.cli; print(emanet.cli.__file__); print(emanet.cli.CONFIG_DIR)"],
        capture_output=True, text=True, check=True, env=env, cwd=bin_folder,
    ).stdout.split()
    module, config_dir = map(Path, located)
    assert module.is_relative_to(bin_folder.parent) and not module.is_relative_to(REPO)
    shipped = sorted(path.relative_to(config_dir).as_posix() for path in config_dir.rglob("*.yaml"))
    in_checkout = sorted(path.relative_to(REPO / "emanet" / "configs").as_posix()
                         for path in (REPO / "emanet" / "configs").rglob("*.yaml"))
    assert len(shipped) > 40 and shipped == in_checkout


def test_emanet_train_runs_the_demo_from_another_folder(installed, tmp_path):
    bin_folder, env = installed
    before = checkout_files()
    result = subprocess.run(
        [bin_folder / "emanet-train", *TINY_DEMO, "hydra.run.dir=runs/demo/installed"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "demo" / "installed"
    for name in ("config.yaml", "metrics.json", "checkpoints/last.pt", "train.log"):
        assert (run_dir / name).is_file(), name
    assert (tmp_path / "data" / "demo" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").is_file()
    assert "data_root: data\n" in (run_dir / "config.yaml").read_text()
    assert checkout_files() == before


@pytest.mark.parametrize("command", ["emanet-evaluate", "emanet-predict", "emanet-prepare-dataset", "emanet-export"])
def test_the_other_console_scripts_answer_help(installed, tmp_path, command):
    bin_folder, env = installed
    result = subprocess.run(
        [bin_folder / command, "--help"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"emanet-evaluate": "checkpoint=PATH", "emanet-predict": "input=", "emanet-prepare-dataset": "voc_aug",
                "emanet-export": "checkpoint=RUN"}
    assert expected[command] in result.stdout
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


def test_the_three_lines_of_the_python_api_run_from_another_folder(installed, tmp_path):
    bin_folder, env = installed
    run_dir = tmp_path / "run"
    write_demo_run(run_dir)
    write_photo(tmp_path / "photo.jpg", 70, 90, seed=1)
    three_lines = (
        "import emanet\n"
        "from emanet import Segmenter\n"
        f"seg = Segmenter.from_checkpoint({str(run_dir)!r})\n"
        "mask = seg.predict('photo.jpg')\n"
        "probs = seg.predict('photo.jpg', probabilities=True)\n"
        "agree = int((probs.argmax(0) == mask).all())\n"
        "print(emanet.__file__, seg.backend, mask.shape, mask.dtype, probs.shape, agree)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "photo.jpg", elsewhere)

    result = subprocess.run(
        [bin_folder / "python", "-c", three_lines], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    module, backend, *shapes = result.stdout.split(maxsplit=2)
    assert Path(module).is_relative_to(bin_folder.parent) and not Path(module).is_relative_to(REPO)
    # on a CPU with the [export] extra (in dev), the default runs onnxruntime
    assert backend == "onnxruntime"
    assert shapes[0].split() == ["(70,", "90)", "uint8", "(5,", "70,", "90)", "1"]

"""The fault battery's runs: the entry points of a checkout started on the demo as a user or
a cluster would, and what the scenarios of :mod:`emanet.benchmarks.fault_battery` read of
their results."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

STOPPED = 3  # the documented status of a run stopped by a signal, with its checkpoint

ITERATIONS = 300
RUN = [
    f"schedule.iterations={ITERATIONS}", "schedule.batch_size=4", "schedule.log_every=20",
    "schedule.checkpoint_every=5", "dataset.generate.num_train=8", "dataset.generate.num_val=2",
    "eval.scales=[1.0]", "eval.flip=false", "runtime.num_workers=0", "runtime.progress=false",
    # One thread: on a machine busy with other work, torch's default thread count
    # oversubscribes the cores and a run takes many times longer.
    "runtime.threads=1",
]


class Battery:
    """Runs the entry points of the checkout ``repo`` (``train.py`` on the battery's settings,
    ``evaluate.py``, ``scripts/predict.py``) with results under ``out``; every run shares
    one data root."""

    def __init__(self, repo: Path, out: Path) -> None:
        self.repo = repo
        self.out = out
        self.data_root = out / "data"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a child process: the checkout's package importable."""
        return {**os.environ, "PYTHONPATH": str(self.repo)}

    def command(self, run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, str(self.repo / "train.py"), *RUN, f"data_root={self.data_root}",
                f"hydra.run.dir={run_dir}", *extra]

    def start(self, run_dir: Path, *extra: str) -> subprocess.Popen:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(run_dir.parent / f"{run_dir.name}.out", "a")  # noqa: SIM115 (the child's output)
        return subprocess.Popen(self.command(run_dir, *extra), cwd=self.out, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)

    def run(self, run_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        return self.script("train.py", *self.command(run_dir, *extra)[2:], timeout=timeout)

    def script(self, script: str, *arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``script`` run as a user would, from the results folder (whose ``data/`` is the
        default data root), with only ``arguments`` on its command line."""
        return subprocess.run([sys.executable, str(self.repo / script), *arguments], cwd=self.out, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def identical(run_dir: Path, reference: dict[str, torch.Tensor]) -> bool:
    weights = final_weights(run_dir)
    return weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def newest_iteration(run_dir: Path) -> int:
    names = sorted((run_dir / "checkpoints").glob("iter_*.pt"))
    return int(names[-1].stem.removeprefix("iter_")) if names else 0


def last_line(text: str, containing: str) -> str:
    return next((line for line in reversed(text.splitlines()) if containing in line), "")


def tree_digests(folder: Path, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """The SHA-256 of every file under ``folder`` (but those under ``leave_out``), by path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.relative_to(folder).as_posix().startswith(leave_out)
    }


def copy_of_reference(battery: Battery, name: str) -> Path:
    run_dir = battery.out / name / "run"
    shutil.copytree(battery.out / "reference" / "run", run_dir, symlinks=True)
    return run_dir


def one_line(result: subprocess.CompletedProcess, containing: str = "error:") -> str:
    return last_line(result.stdout + result.stderr, containing).split(" - ", 1)[-1]


def photo_folder(battery: Battery, name: str, copies: int) -> Path:
    """A folder of ``copies`` photos (the demo's JPEGs under other names)."""
    folder = battery.out / name / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((battery.data_root / "demo" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    for index in range(copies):
        shutil.copy(sources[index % len(sources)], folder / f"IMG_{index:04d}.jpg")
    return folder


def damaged_copy_of_the_data(battery: Battery, name: str) -> Path:
    root = battery.out / name / "VOC2012"
    shutil.copytree(battery.data_root / "demo" / "VOC2012", root)
    return root

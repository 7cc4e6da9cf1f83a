"""What several test modules share: the settings of the tiny demo training, configs composed
as the tests need them, the entry points run as a user runs them, and small builders and
reference computations."""

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from tests_paths import REPO

from emanet import cli, prepare_dataset
from emanet.data.palette import color_map
from emanet.engine.checkpoint import save_checkpoint
from emanet.models.segmentor import build_model

# The demo, trained for 6 iterations on 10 images (2 batches per epoch: the run crosses
# epochs) with a checkpoint after every iteration, and scored on 2 val images at a single
# scale. conftest.py's full_run is this training; every test that trains starts from these
# settings.
TINY = [
    "schedule.iterations=6",
    "schedule.batch_size=4",
    "schedule.log_every=2",
    "schedule.checkpoint_every=1",
    "schedule.checkpoint_keep=3",
    "dataset.generate.num_train=10",
    "dataset.generate.num_val=2",
    "eval=ss",
    "runtime.num_workers=0",
    "runtime.progress=false",
]

# Prediction settings of the tests that segment photos: in the main process, two scales.
QUIET = ["runtime.num_workers=0", "runtime.progress=false", "eval.scales=[0.75,1.0]"]


@cache
def folder_dataset_root() -> Path:
    """A folder holding only a classes.txt, outside the checkout: what ``dataset=folder``
    needs to compose a config (its classes come from ROOT/classes.txt)."""
    root = Path(tempfile.mkdtemp(prefix="emanet_folder_"))
    (root / "classes.txt").write_text("background\nleaf 0 200 0\n")
    return root


def experiment_overrides(name: str) -> list[str]:
    """``experiment=NAME``, with a ``dataset.root`` where the experiment reads a folder of one's own."""
    return [f"experiment={name}", *([f"dataset.root={folder_dataset_root()}"] if name.startswith("folder") else [])]


def compose_config(overrides: list[str], config_name: str = "train"):
    """The config of ``config_name`` with ``overrides``, composed and checked as train.py,
    evaluate.py and predict.py compose theirs (:func:`emanet.cli.compose_config`)."""
    return cli.compose_config(config_name, overrides)


def run_entry_point(script: str, *arguments: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python <script> <arguments>`` in a fresh process, as a user runs it (``script``
    relative to the repository)."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *arguments], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )


def assert_same_weights(resumed: dict, uninterrupted: dict) -> None:
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def copy_checkpoints(source: Path, run_dir: Path, iterations: list[int]) -> Path:
    """The checkpoints (with their digests) an interrupted run would have left in ``run_dir``."""
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True)
    for iteration in iterations:
        for file in (source / "checkpoints").glob(f"iter_{iteration:07d}.pt*"):
            shutil.copy(file, directory)
    return directory


def write_photo(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def write_demo_run(run_dir, overrides=(), seed=0):
    """A training run's directory as train.py leaves it (config.yaml, checkpoints/last.pt),
    holding a demo-sized model with random weights (whose classes vary across an image, so
    that comparisons are not between constant maps); returns (config, model)."""
    cfg = compose_config(list(overrides))
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    state = {"model": model.state_dict(), "iteration": 7, "config": OmegaConf.to_container(cfg, resolve=True)}
    save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    return cfg, model.eval()


def save_random_model(path: Path, seed: int = 0, iteration: int = 7) -> torch.nn.Module:
    """A demo-sized model with random weights, saved at ``path`` in this project's checkpoint format."""
    cfg = compose_config([])
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    save_checkpoint({"model": model.state_dict(), "iteration": iteration, "config": {"name": "demo"}}, path)
    return model


def bilinear_reference(image: np.ndarray, height: int, width: int, align_corners: bool) -> np.ndarray:
    """Bilinear resize (C, H, W) -> (C, height, width) written from the two conventions'
    definitions: a destination pixel's source coordinate is dst * (in - 1) / (out - 1) with
    corners aligned, (dst + 0.5) * in / out - 0.5 (clamped at 0) with half-pixel centres."""

    def source(out_size, in_size):
        dst = np.arange(out_size, dtype=np.float64)
        if align_corners:
            coords = dst * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
        else:
            coords = np.maximum((dst + 0.5) * in_size / out_size - 0.5, 0)
        low = np.floor(coords).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, coords - low

    rows_low, rows_high, row_weight = source(height, image.shape[1])
    cols_low, cols_high, col_weight = source(width, image.shape[2])
    top = image[:, rows_low] * (1 - row_weight)[:, None] + image[:, rows_high] * row_weight[:, None]
    return top[:, :, cols_low] * (1 - col_weight) + top[:, :, cols_high] * col_weight


# A process holding the flock of the file argv[1] for two minutes, as a running job holds its lock.
HOLD_LOCK = """
import fcntl, os, socket, sys, time
with open(sys.argv[1], "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(f"pid {os.getpid()} on host {socket.gethostname()}")
    lock.flush()
    print("held", flush=True)
    time.sleep(120)
"""


def code_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block, a backslash-continued line joined into one and
    trailing comments left out."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    return [[re.sub(r"\s+#.*", "", line) for line in block.replace("\\\n", " ").splitlines()] for block in blocks]


def write_label_png(path, ids, mode):
    """``ids`` as a palette ("P", VOC colours) or greyscale ("L") PNG, written here with
    Pillow, not by the converter under test."""
    image = Image.fromarray(np.asarray(ids, dtype=np.uint8))
    if mode == "P":
        image.putpalette(color_map().flatten().tolist())
    image.save(path)


def folder_is_locked(folder) -> bool:
    """Whether another open file holds the flock on ``folder`` (a second descriptor's flock
    conflicts with it, even in the same process)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)


def run_cli(monkeypatch, capsys, *argv):
    """``emanet-prepare-dataset ARGV``: its exit status (0 when it returns) and stderr."""
    monkeypatch.setattr(sys, "argv", ["emanet-prepare-dataset", *argv])
    try:
        prepare_dataset.main()
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err

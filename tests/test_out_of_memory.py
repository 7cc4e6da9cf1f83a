"""Running out of memory in evaluation, prediction and training ends in one line naming the
memory asked for, what was being segmented and the settings that bound it (exit status 2),
not in a traceback."""

import os
import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tests_paths import REPO
from torch import nn

import emanet.engine.evaluator as evaluator
from emanet.cli import compose_config, one_line_errors
from emanet.engine.checkpoint import save_checkpoint
from emanet.engine.evaluator import Inference, evaluate, predict
from emanet.engine.predict import predict_files
from emanet.engine.train import train_step
from emanet.errors import OutOfMemoryError
from emanet.models.segmentor import build_model

# PyTorch's own messages: its CPU allocator's (a plain RuntimeError) and its CUDA one's.
CPU_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 103079215104 bytes. Error code 12 (Cannot allocate memory)"
)
GPU_FAILURE = (
    "CUDA out of memory. Tried to allocate 96.00 GiB. GPU 0 has a total capacity of 139.72 GiB of which 38.21 GiB "
    "is free. Including non-PyTorch memory, this process has 101.50 GiB memory in use. Of the allocated memory "
    "99.10 GiB is allocated by PyTorch, and 1.20 GiB is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
    "fragmentation.  See documentation for Memory Management  "
    "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)
FAILURES = [RuntimeError(CPU_FAILURE), torch.OutOfMemoryError(GPU_FAILURE)]


def failing_at(scale: float, failure: Exception):
    """``logits_at_scale`` that runs out of memory at ``scale``."""
    real = evaluator.logits_at_scale

    def logits_at_scale(model, images, at, flip, inference):
        if at == scale:
            raise failure
        return real(model, images, at, flip, inference)

    return logits_at_scale


@pytest.mark.parametrize("failure", FAILURES, ids=["cpu", "cuda"])
def test_evaluation_out_of_memory_is_one_line_with_the_gib_the_image_and_the_fix(monkeypatch, capsys, failure):
    monkeypatch.setattr(evaluator, "logits_at_scale", failing_at(4.0, failure))
    batch = {
        "image": torch.zeros(1, 3, 1024, 2048), "label": torch.zeros(1, 1024, 2048, dtype=torch.int64),
        "id": ["frankfurt_000000_000294"],
    }
    with pytest.raises(SystemExit) as exit_status, one_line_errors():
        evaluate(nn.Conv2d(3, 5, 1), [batch], 5, [1.0, 4.0], False, torch.device("cpu"), progress=False)
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == (
        "error: out of memory segmenting frankfurt_000000_000294 at scale 4.0 (a whole image of 1024x2048, "
        "4096x8192 at that scale): the allocator was asked for 96.0 GiB; pass eval.mode=slide (windows of "
        "eval.crop_size) or lower eval.scales\n"
    )


def test_sliding_windows_out_of_memory_names_the_window_settings(monkeypatch):
    monkeypatch.setattr(evaluator, "logits_at_scale", failing_at(1.75, RuntimeError(CPU_FAILURE)))
    with pytest.raises(OutOfMemoryError) as raised:
        predict(nn.Conv2d(3, 5, 1), torch.zeros(4, 3, 512, 1024), [1.75], True, Inference("slide", 513, 341, 12),
                ids=["a", "b", "c", "d"])
    assert str(raised.value) == (
        "out of memory segmenting a, b, c and 1 more at scale 1.75 (4 images of 512x1024, 896x1792 at that scale, "
        "in windows of 513x513, 12 per pass): the allocator was asked for 96.0 GiB; lower eval.crops_per_pass "
        "(now 12) / eval.crop_size / eval.scales / eval.batch_size"
    )
    assert isinstance(raised.value.__cause__, RuntimeError)  # the allocator's own words, for a debugger


def test_an_error_other_than_memory_passes_unchanged(monkeypatch):
    failure = RuntimeError("Given groups=1, weight of size [5, 4, 1, 1], expected input to have 4 channels")
    monkeypatch.setattr(evaluator, "logits_at_scale", failing_at(1.0, failure))
    with pytest.raises(RuntimeError) as raised:
        predict(nn.Conv2d(3, 5, 1), torch.zeros(1, 3, 8, 8), [1.0], False)
    assert raised.value is failure


def test_prediction_out_of_memory_names_the_image_file(tmp_path, monkeypatch):
    cfg = compose_config("train", [])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": {"name": "demo"}}, tmp_path / "model.pt")
    Image.new("RGB", (90, 70)).save(tmp_path / "holiday.png")
    cfg = compose_config("predict", [
        f"checkpoint={tmp_path / 'model.pt'}", f"input={tmp_path / 'holiday.png'}", "eval=ss", "eval.scales=[2.0]",
        "runtime.num_workers=0", "runtime.progress=false",
    ])
    monkeypatch.setattr(evaluator, "logits_at_scale", failing_at(2.0, torch.OutOfMemoryError(GPU_FAILURE)))
    with pytest.raises(OutOfMemoryError) as raised:
        predict_files(cfg, tmp_path)
    assert str(raised.value) == (
        "out of memory segmenting holiday at scale 2.0 (a whole image of 70x90, 140x180 at that scale): the "
        "allocator was asked for 96.0 GiB; pass eval.mode=slide (windows of eval.crop_size) or lower eval.scales"
    )


class OutOfMemoryNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, images):
        raise RuntimeError(CPU_FAILURE.replace("103079215104", "6442450944"))  # 6 GiB


def test_training_out_of_memory_names_the_micro_batch_and_the_settings_that_bound_it():
    model = OutOfMemoryNetwork()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {"image": torch.zeros(2, 3, 64, 48), "label": torch.zeros(2, 64, 48, dtype=torch.int64)}
    with pytest.raises(OutOfMemoryError) as raised:
        train_step(model, [batch, batch], optimizer, torch.device("cpu"), 255, "valid", iteration=7)
    assert str(raised.value) == (
        "out of memory training at iteration 8 (micro-batches of 2 crops of 64x48): the allocator was asked for "
        "6.0 GiB; raise schedule.accumulation_steps (the same batch in smaller passes) or lower "
        "schedule.batch_size / dataset.crop_size"
    )


# What a process that imported torch maps before evaluating; the limit leaves 1 GiB above it.
LIMITED_EVALUATE = """
import resource, runpy, sys
import emanet.engine.evaluate, hydra, torch  # mapped before the limit: their size varies by build
with open("/proc/self/status") as status:
    mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + 2**30, mapped + 2**30))
sys.argv = ["evaluate.py", *sys.argv[1:]]
runpy.run_path("evaluate.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmSize from Linux's /proc")
def test_a_real_allocation_failure_of_evaluate_py_ends_in_one_line_with_status_2(tmp_path, data_root):
    cfg = compose_config("train", [])
    model = build_model(cfg.model, cfg.dataset.num_classes, load_pretrained=False)
    checkpoint = {"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    # Scale 64 makes a 64-80 pixel demo image a whole image of about 4800x4800: gigabytes of
    # activations, over the 1 GiB left. One thread: no thread pool's stacks in the address space.
    result = subprocess.run(
        [sys.executable, "-c", LIMITED_EVALUATE, f"checkpoint={tmp_path / 'model.pt'}", f"data_root={data_root}",
         "dataset.generate.num_train=10", "dataset.generate.num_val=2", "eval=ss", "eval.mode=whole",
         "eval.scales=[64.0]", "runtime.threads=1", "runtime.num_workers=0", "runtime.progress=false",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.fullmatch(
        r"error: out of memory segmenting demo_val_0000[01] at scale 64\.0 \(a whole image of \d+x\d+, \d+x\d+ at "
        r"that scale\): the allocator was asked for \d+\.\d [GM]iB; pass eval\.mode=slide \(windows of "
        r"eval\.crop_size\) or lower eval\.scales",
        result.stderr.splitlines()[-1],
    ), result.stderr

"""The GPU acceptance check (scripts/benchmark.py acceptance: emanet.benchmarks.acceptance and
emanet.engine.acceptance) on a CPU at toy sizes: every check reported, the CUDA-only ones
skipped with their reasons, the others within their tolerances, and a broken network or a
zero tolerance failing.

Speeds are not asserted beyond being measured: they belong to docs/benchmarks.md."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from tests_paths import REPO
from torch import nn

import emanet.benchmarks.acceptance as acceptance_run
from emanet.benchmarks import records
from emanet.benchmarks.tables import keep_result
from emanet.cli import compose_config
from emanet.engine import acceptance
from emanet.engine.amp import AmpSettings

EVERY_CHECK = [
    "cuda_vs_cpu_logits", "cudnn_benchmark_logits", "bf16_training_loss", "bf16_training_logits",
    "fp16_training_loss", "fp16_training_logits", "channels_last_logits", "compile_logits",
    "sync_batch_norm_output", "sync_batch_norm_running_stats", "sync_batch_norm_gradients",
]
CUDA_ONLY = ["cuda_vs_cpu_logits", "cudnn_benchmark_logits", "compile_logits", "sync_batch_norm_output",
             "sync_batch_norm_running_stats", "sync_batch_norm_gradients"]
PUBLISHED = [REPO / "docs" / records.JSONL, REPO / "docs" / records.MARKDOWN]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo():
    """The demo network's config at 33x33 crops, its check network and a batch of 2."""
    cfg = compose_config("train", ["experiment=demo", "dataset.crop_size=33"])
    return cfg, acceptance.check_model(cfg), acceptance.check_batch(cfg, CPU)


def run_acceptance(monkeypatch, tmp_path) -> dict:
    """The acceptance run at toy sizes on a CPU, from ``tmp_path``, kept in ``tmp_path / "run"``
    as ``benchmark.py acceptance`` keeps it; its result."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    result = acceptance_run.acceptance_benchmark(CPU, steps=2, repeats=1, images=1)
    keep_result("acceptance", "python scripts/benchmark.py acceptance", result, REPO / "docs", publish=False,
                run_dir=tmp_path / "run")
    return result


@pytest.mark.slow
def test_the_cpu_run_reports_every_check_and_measures_speed_into_its_run_directory(tmp_path, monkeypatch, capsys):
    published = [path.read_bytes() for path in PUBLISHED]
    run_acceptance(monkeypatch, tmp_path)
    [record] = records.records("acceptance", tmp_path / "run")
    checks = {check["name"]: check for check in record["checks"]}
    assert list(checks) == EVERY_CHECK
    for name in CUDA_ONLY:
        assert checks[name]["status"] == "SKIP" and checks[name]["detail"] == acceptance.CPU_SKIPS[name]
    for name in set(EVERY_CHECK) - set(CUDA_ONLY):
        assert checks[name]["status"] == "PASS", checks[name]
        assert 0 <= checks[name]["difference"] <= checks[name]["tolerance"]
    # bfloat16 rounds: its loss and logits differ from float32's, within the bound.
    assert checks["bf16_training_loss"]["difference"] > 0 and checks["bf16_training_logits"]["difference"] > 0
    assert record["passed"] is True and record["model"] == "demo R18 OS8"
    assert (record["crop"], record["batch"], record["steps"], record["eval_images"]) == (33, 2, 2, 1)
    assert record["cudnn_benchmark"] is True
    assert [row["variant"] for row in record["train_rows"]] == ["fp32", "bf16_cl"]
    assert list(record["not_measured"]) == ["bf16_cl_compile"]
    assert [(row["variant"], row["protocol"], row["scales"]) for row in record["eval_rows"]] == [
        ("fp32", "MS+flip", [0.5, 1.0]), ("bf16_cl", "MS+flip", [0.5, 1.0]),
    ]
    assert all(row["images_per_second"] > 0 for row in record["train_rows"] + record["eval_rows"])
    out = capsys.readouterr().out
    assert "acceptance: PASS (5 PASS, 0 FAIL, 6 SKIP)" in out
    table = out.split("check ", 1)[1]
    for name in EVERY_CHECK:
        assert name in table
    assert "train bf16_cl_compile" in out and "not measured on a CPU" in out
    run_table = (tmp_path / "run" / "benchmarks.md").read_text()
    assert "| demo R18 OS8 | 33, 2 | PASS (5 PASS, 0 FAIL, 6 SKIP) |" in run_table
    # Nothing written into the checkout or the working directory but the run directory.
    assert [path.read_bytes() for path in PUBLISHED] == published
    assert [path.name for path in tmp_path.iterdir()] == ["run"]


@pytest.mark.slow
def test_a_failed_check_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(acceptance.TOLERANCES, "bf16_loss", acceptance.Tolerance(0.0))  # bf16 rounds: > 0
    monkeypatch.setattr(acceptance_run, "measure_train", lambda *args: [
        {"variant": "fp32", "images_per_second": 1.0, "tflops": 0.1, "peak_memory_gib": None,
         "fraction_of_bf16_peak": None}])
    monkeypatch.setattr(acceptance_run, "measure_eval", lambda *args, **kwargs: [
        {"variant": "fp32", "protocol": "MS+flip", "scales": [1.0], "flip": True, "images_per_second": 1.0,
         "peak_memory_gib": None}])
    assert run_acceptance(monkeypatch, tmp_path)["passed"] is False  # benchmark.py exits with status 1
    [record] = records.records("acceptance", tmp_path / "run")
    [failed] = [check for check in record["checks"] if check["status"] == "FAIL"]
    assert failed["name"] == "bf16_training_loss" and failed["difference"] > failed["tolerance"] == 0
    assert record["passed"] is False
    assert "acceptance: FAIL (4 PASS, 1 FAIL, 6 SKIP)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--steps", "--repeats", "--images"])
def test_a_count_below_one_is_refused_naming_the_option(option):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "acceptance", option, "0"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert result.returncode == 2
    assert f"argument {option}: expected a whole number of at least 1, got '0'" in result.stderr


def test_compare_passes_within_the_tolerance_and_fails_past_it_or_on_non_finite_values():
    reference = torch.tensor([1.0, -4.0, 2.0])
    tolerance = acceptance.Tolerance(relative=0.01, absolute=0.02)  # 0.02 + 0.01 x 4 = 0.06
    close = acceptance.compare("c", reference + torch.tensor([0.0, 0.05, 0.0]), reference, tolerance, "x")
    assert (close.status, close.tolerance) == ("PASS", pytest.approx(0.06))
    assert close.difference == pytest.approx(0.05, abs=1e-6)
    far = acceptance.compare("c", reference + torch.tensor([0.0, 0.0, 0.07]), reference, tolerance, "x")
    assert far.status == "FAIL" and far.difference == pytest.approx(0.07, abs=1e-6)
    infinite = acceptance.compare("c", torch.tensor([1.0, float("inf"), 2.0]), reference, tolerance, "x")
    assert infinite.status == "FAIL" and infinite.difference is None and "not finite" in infinite.detail
    # Several tensors: each against its own scale; the worst one is reported.
    pairs = {"small": (torch.tensor([0.011]), torch.tensor([0.01])),
             "large": (torch.tensor([10.5]), torch.tensor([10.0]))}
    worst = acceptance.compare_tensors("c", pairs, acceptance.Tolerance(0.2))
    assert worst.status == "PASS" and "large" not in worst.detail and "worst of 2: small" in worst.detail


class Overflowing(nn.Module):
    """A network whose logits leave float16's range (largest 65504) but not float32's."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images) * 1e6


def test_the_mixed_precision_checks_pass_the_demo_network_and_fail_one_that_overflows_float16(demo):
    cfg, model, batch = demo
    reference = acceptance.train_and_predict(model, batch, cfg, CPU, AmpSettings(), steps=2)
    assert reference.losses.shape == (2,) and reference.logits.shape == (2, 5, 33, 33)
    results = acceptance.check_amp_training(model, batch, cfg, CPU, "fp16", 2, reference,
                                            acceptance.TOLERANCES["fp16_loss"], acceptance.TOLERANCES["fp16_logits"])
    assert [(r.name, r.status) for r in results] == [("fp16_training_loss", "PASS"), ("fp16_training_logits", "PASS")]
    assert all(0 < r.difference <= r.tolerance for r in results)

    overflowing = Overflowing(model)
    reference = acceptance.train_and_predict(overflowing, batch, cfg, CPU, AmpSettings(), steps=1)
    assert torch.isfinite(reference.losses).all()  # float32 holds the large logits
    loss, logits = acceptance.check_amp_training(overflowing, batch, cfg, CPU, "fp16", 1, reference,
                                                 acceptance.TOLERANCES["fp16_loss"],
                                                 acceptance.TOLERANCES["fp16_logits"])
    assert loss.status == "FAIL" and "loss became" in loss.detail and "iteration 1" in loss.detail
    assert logits.status == "FAIL" and logits.difference is None


def test_batch_norm_variants_agree_when_converted_and_differ_when_a_weight_is_changed(demo):
    cfg, model, batch = demo
    # Without a process group SyncBatchNorm computes what BatchNorm does (on a CPU too).
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    results = acceptance.compare_batch_norm_variants(
        copy.deepcopy(model), synced, batch, cfg.dataset.ignore_index, acceptance.TOLERANCES["sync_batch_norm"],
        "bn",
    )
    assert [(r.name, r.status) for r in results] == [("bn_output", "PASS"), ("bn_running_stats", "PASS"),
                                                      ("bn_gradients", "PASS")]
    perturbed = copy.deepcopy(model)
    first_conv = next(module for module in perturbed.modules() if isinstance(module, nn.Conv2d))
    with torch.no_grad():
        first_conv.weight.add_(0.1 * torch.randn_like(first_conv.weight, generator=torch.Generator().manual_seed(1)))
    results = acceptance.compare_batch_norm_variants(
        copy.deepcopy(model), perturbed, batch, cfg.dataset.ignore_index, acceptance.TOLERANCES["sync_batch_norm"],
        "bn",
    )
    assert {r.name: r.status for r in results} == {"bn_output": "FAIL", "bn_running_stats": "FAIL",
                                                   "bn_gradients": "FAIL"}
    assert all(r.difference > r.tolerance for r in results)


@pytest.mark.slow
def test_compile_and_channels_last_checks_compare_with_the_plain_network(demo):
    cfg, model, batch = demo
    # The eager backend traces with TorchDynamo as inductor does, without compiling kernels.
    compiled = acceptance.check_compile(model, batch["image"], acceptance.TOLERANCES["compile"], backend="eager")
    nhwc = acceptance.check_channels_last(model, batch["image"], acceptance.TOLERANCES["channels_last"])
    assert (compiled.status, nhwc.status) == ("PASS", "PASS")
    assert compiled.tolerance > 0 and nhwc.difference <= nhwc.tolerance


def test_the_residual_blocks_of_the_check_network_start_as_the_identity(demo):
    cfg, model, _ = demo
    last_norms = [block.bn2.weight for block in model.modules() if isinstance(block, acceptance.BasicBlock)]
    assert len(last_norms) == 8 and all(torch.equal(w, torch.zeros_like(w)) for w in last_norms)
    assert all(module.p == 0.0 for module in model.modules() if isinstance(module, nn.Dropout2d))


def test_the_published_table_says_so_until_a_gpu_has_run_it():
    cpu_run = {
        "date": "2026-12-03T10:00:00+00:00", "machine": {"cpu_count": 2, "cpu_model": "AMD EPYC", "torch": "2.14.1"},
        "model": "demo R18 OS8", "crop": 33, "batch": 2, "passed": True, "wall_seconds": 14.8,
        "checks": [{"status": "PASS"}, {"status": "SKIP"}],
        "train_rows": [{"variant": "fp32", "images_per_second": 109.66, "peak_memory_gib": None}],
        "eval_rows": [{"variant": "bf16_cl", "images_per_second": 10.18, "peak_memory_gib": None}],
    }
    gpu_run = {
        **cpu_run, "machine": {"gpu": "NVIDIA H200", "cpu_count": 16, "torch": "2.14.1"},
        "model": "voc_emanet512 R101 OS8", "crop": 513, "batch": 16,
        "train_rows": [{"variant": "bf16_cl", "images_per_second": 160.0, "peak_memory_gib": 40.1}],
    }
    lines = acceptance_run.acceptance_table([cpu_run]).splitlines()
    assert lines[2] == ("| 2026-12-03 | 2 CPUs (AMD EPYC), torch 2.14.1 | demo R18 OS8 | 33, 2 "
                        "| PASS (1 PASS, 0 FAIL, 1 SKIP) | 109.66 / - / - | - | - / 10.18 | 14.8 |")
    assert "not measured on a GPU yet" in lines[3]
    lines = acceptance_run.acceptance_table([cpu_run, gpu_run]).splitlines()
    assert len(lines) == 4 and "| NVIDIA H200, torch 2.14.1 |" in lines[3] and "| - / 160.0 / - | 40.1 |" in lines[3]


def test_the_published_page_has_the_acceptance_section_and_table():
    text = (REPO / "docs" / records.MARKDOWN).read_text()
    section = text.split("## GPU acceptance check\n", 1)[1].split("\n## ", 1)[0]
    assert "python scripts/benchmark.py acceptance --record" in section
    for name in ("cuda_vs_cpu_logits", "bf16_training_loss", "compile_logits", "sync_batch_norm_output"):
        assert name in section
    assert "<!-- acceptance-table:begin -->" in section and "<!-- acceptance-table:end -->" in section
    published = records.records("acceptance", REPO / "docs")
    assert section.split("<!-- acceptance-table:begin -->\n", 1)[1].split("\n<!--", 1)[0] == (
        acceptance_run.acceptance_table(published)
    )
